"""Running one batch: its indices in order, its stateful filters' shard, nothing shared.

Every backend runs work through :func:`execute_batch`. A batch gets its own copies of the
pipeline's stateful filters, so state never leaks between batches; a failed index's
contribution to that state is rolled back, so a failed index contributes nothing to merged
results. :func:`write_shards` then flushes each stateful filter to a fresh temp path and
renames it to a shard name unique to this attempt (host, pid and a random token), so two
hosts, containers or attempts can never collide. For an output on object storage (a URL)
the flushed temp file is uploaded to the attempt-unique shard key in one write instead
(no rename there); the batch's commit record names the key that counts.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import socket
import time
import traceback
import tracemalloc
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from curator_worker.errors import PipelineError
from curator_worker.limits import BatchTimeLimit, Deadlines, IndexTimeout, memory_limit
from curator_worker.pipeline import Filter, Pipeline, is_stateful
from curator_worker.planning import ints_in_range
from curator_worker.policy import BatchPolicy

log = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()
SHARD_SUFFIX = ".shard"

#: What a run id (job id) or batch key must look like to become part of a file name: ASCII
#: letters, digits, ``.``, ``_`` and ``-``, not starting with a dot, at most 200 characters.
#: No separator, no ``..``, no NUL, nothing a file system or a terminal reads differently.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)


def is_safe_name(name: object) -> bool:
    """True when ``name`` may be part of a file name (:data:`SAFE_NAME`).

    Examples
    --------
    >>> is_safe_name("b000123"), is_safe_name("r2-b000001"), is_safe_name("../x")
    (True, True, False)
    """
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def _require_safe_name(name: str, what: str) -> None:
    if not is_safe_name(name):
        raise ValueError(
            f"Refusing {what} {ascii(name)[:80]} in a file name: use ASCII letters, digits, "
            "'.', '_' and '-' (not first), at most 200 characters."
        )


#: Indices at least this long (seconds) always get per-stage timings.
STAGE_TIMING_ALWAYS = 0.1
#: After an index shorter than :data:`STAGE_TIMING_ALWAYS`, stages are timed on one index
#: in this many. Timing wraps every stage's iterator: microseconds of work per index, more
#: than a microsecond index itself, and on a CPU just woken from a sleeping index about
#: 0.3 % of a 20 ms index (measured); sampling keeps that near zero.
STAGE_TIMING_SAMPLE = 16


@dataclass(slots=True)
class IndexResult:
    """The outcome of one index: the sink's paths, or the error."""

    index: int
    paths: list[str] | None = None
    error: dict[str, Any] | None = None
    seconds: float = 0.0
    attempt: int = 1
    tries: int = 1
    stages: dict[str, float] | None = None
    finished: float | None = None
    peak_mb: float | None = None

    @property
    def ok(self) -> bool:
        """True when the index succeeded."""
        return self.error is None

    def as_record(self) -> dict[str, Any]:
        """The JSON record stored in the job store (seconds in whole µs, ``end`` in ms)."""
        record: dict[str, Any] = {"index": self.index, "seconds": round(self.seconds * 1e6) / 1e6,
                                  "attempt": self.attempt}
        if self.tries > 1:
            record["tries"] = self.tries
        if self.error is not None:
            record["error"] = self.error
            return record
        record["paths"] = self.paths
        if self.stages:
            record["stages"] = {k: round(v, 6) for k, v in self.stages.items()}
        if self.finished is not None:
            record["end"] = round(self.finished * 1e3) / 1e3
        if self.peak_mb is not None:
            record["peak_mb"] = round(self.peak_mb, 3)
        return record


@dataclass
class BatchOutcome:
    """What a batch produced: per-index results and its private stateful filters."""

    results: list[IndexResult]
    filters: list[Filter[Any]]
    stateful_positions: list[int] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def n_ok(self) -> int:
        """Indices that succeeded."""
        return sum(1 for r in self.results if r.ok)


def error_record(
    exc: BaseException, attempt: int = 1, kind: str = "error", tries: int = 1
) -> dict[str, Any]:
    """A JSON-ready description of ``exc``: kind, type, message, traceback, attempts, host, pid.

    ``kind`` is ``error``, ``timeout``, ``memory``, ``batch_time_limit``, ``crash`` or
    ``systemic``; ``attempt`` is the batch's delivery, ``tries`` the index's own attempts.
    """
    return {
        "kind": kind,
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
        "attempt": attempt,
        "tries": tries,
        "host": HOSTNAME,
        "pid": os.getpid(),
    }


def output_path_of(f: Filter[Any]) -> str:
    """The final output path of stateful filter ``f`` (its ``_output_path``).

    Raises
    ------
    PipelineError
        If the filter has neither ``_output_path`` nor an artifact to name its output.
    """
    path = getattr(f, "_output_path", None)
    if not path:
        artifacts = f.artifacts() if hasattr(f, "artifacts") else []
        path = artifacts[0] if artifacts else None
    if not path:
        raise PipelineError(
            f"Stateful filter {type(f).__name__} has no _output_path. Set it in __init__ to "
            "the final output file."
        )
    return os.fspath(path)


def shard_dir(final_output: str, run_id: str) -> Path:
    """Folder of the shards of one run (job) for a stateful filter's output.

    ``ValueError`` unless ``run_id`` is a safe name (:func:`is_safe_name`): the folder is
    always directly inside ``<final_output>.shards``. For a URL output use
    :func:`shard_location` (this returns a local :class:`~pathlib.Path`).
    """
    _require_safe_name(run_id, "run id")
    return Path(f"{final_output}.shards") / run_id


def is_url(path: str) -> bool:
    """True when ``path`` is an fsspec URL other than ``file://`` (e.g. ``s3://b/k``)."""
    from curator_worker.components.storage import is_remote

    return is_remote(path)


def absolute_output(path: str) -> str:
    """``path`` made absolute when it is local; a URL unchanged."""
    return path if is_url(path) else os.path.abspath(path)


def shard_location(final_output: str, run_id: str) -> str:
    """Where the shards of one run of a stateful filter's output go: a folder or a prefix.

    ``<final_output>.shards/<run_id>``, for a local path (made absolute) or a URL alike:
    the one place shard names are made (:func:`shard_name` names the files in it).

    Examples
    --------
    >>> shard_location("s3://bucket/stats.json", "job1")
    's3://bucket/stats.json.shards/job1'
    """
    _require_safe_name(run_id, "run id")
    if is_url(final_output):
        return f"{final_output}.shards/{run_id}"
    return os.fspath(shard_dir(os.path.abspath(final_output), run_id))


def shard_name(key: str, token: str) -> str:
    """The file (object) name of one attempt's shard of batch ``key``."""
    return f"{key}.{token}{SHARD_SUFFIX}"


def attempt_token() -> str:
    """``<host>-<pid>-<random>``: unique to one attempt, on any host or container."""
    return f"{_token_part(HOSTNAME)}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def storage_options_of(f: Filter[Any]) -> dict[str, Any]:
    """The resolved fsspec ``storage_options`` of filter ``f`` (``{}`` when it has none).

    ``"${VARIABLE}"`` values are read from this process's environment; credentials are
    never stored in a shard name or a commit record.
    """
    options = getattr(f, "storage_options", None)
    if not options:
        return {}
    from curator_worker.components.storage import resolve_storage_options

    return resolve_storage_options(options, type(f).__name__)


def execute_batch(
    pipeline: Pipeline,
    indices: Sequence[int],
    *,
    on_error: str = "record",
    attempt: int = 1,
    policy: BatchPolicy | None = None,
    skip: Mapping[int, dict[str, Any]] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_index: Callable[[IndexResult], None] | None = None,
    on_stuck: Callable[[int, str], None] | None = None,
    timings: bool | str = False,
    trace_memory: bool = False,
) -> BatchOutcome:
    """Run ``indices`` in order through ``pipeline`` with private copies of stateful filters.

    Parameters
    ----------
    pipeline : Pipeline
        The pipeline; its own filters are never mutated.
    indices : Sequence[int]
        The batch's indices, in order.
    on_error : {"record", "raise"}
        ``record``: an exception becomes that index's error and the batch goes on.
        ``raise``: the exception propagates (the sequential backend's behaviour).
    attempt : int
        Delivery attempt of the batch, stored with results.
    policy : BatchPolicy, optional
        Timeouts, memory limit and retries (default: none).
    skip : Mapping[int, dict], optional
        Indices not to run, with the error to record for each (e.g. an index that killed
        its worker on earlier attempts).
    should_stop : callable, optional
        Checked before each index; when it returns True the batch stops early.
    on_start : callable, optional
        Called with each index before it runs.
    on_index : callable, optional
        Called with each :class:`IndexResult` as it completes (progress).
    on_stuck : callable, optional
        Called by the watchdog with an index stuck past its deadline in code that ignores
        signals, just before the process kills itself.
    timings : bool or "all"
        Record per-stage seconds: on every index after one that took at least
        :data:`STAGE_TIMING_ALWAYS`, and on one index in :data:`STAGE_TIMING_SAMPLE`
        after faster ones (those results have no ``stages``); ``"all"``: on every index.
    trace_memory : bool
        Record each index's peak Python memory (``tracemalloc``; slows Python code).

    Returns
    -------
    BatchOutcome
    """
    pipeline.require_sink()
    policy = policy or BatchPolicy()
    skip = skip or {}
    positions = [n for n, f in enumerate(pipeline.filters) if is_stateful(f)]
    filters = list(pipeline.filters)
    for n in positions:
        filters[n] = copy.deepcopy(filters[n])
    results: list[IndexResult] = []
    outcome = BatchOutcome(results=results, filters=filters, stateful_positions=positions)
    limited = bool(policy.index_timeout or policy.batch_time_limit)
    deadlines = Deadlines(policy.index_timeout, policy.batch_time_limit, on_stuck) if limited \
        else None

    tracing = trace_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()

    def record(result: IndexResult) -> None:
        if trace_memory:
            result.peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.reset_peak()
        results.append(result)
        if on_index is not None:
            on_index(result)

    # a bad index (out of range, not an int) fails alone, through run_index's own check
    valid = ints_in_range(indices, len(pipeline))
    run_index = pipeline.run_valid_index if valid else pipeline.run_index
    perf_counter = time.perf_counter
    memory_mb = policy.index_memory_mb
    guarded = deadlines is not None or bool(memory_mb)
    previous = float("inf")  # seconds of the previous index (stage timing sampling)
    try:
        for position, index in enumerate(indices):
            if should_stop is not None and should_stop():
                outcome.stopped_early = True
                break
            if index in skip:
                record(IndexResult(index, error=dict(skip[index]), attempt=attempt))
                continue
            if deadlines is not None and deadlines.batch_expired():
                _record_unfinished(indices[position:], attempt, record)
                break
            if on_start is not None:
                on_start(index)
            tries = 1
            while True:
                saved = [copy.deepcopy(filters[n]) for n in positions] if positions else ()
                stages: dict[str, float] | None = None
                if timings and (timings == "all" or previous >= STAGE_TIMING_ALWAYS
                                or position % STAGE_TIMING_SAMPLE == 0):
                    stages = {}
                start = perf_counter()
                try:
                    if guarded:
                        with deadlines.index(index) if deadlines else nullcontext(), \
                                memory_limit(memory_mb):
                            paths = run_index(index, filters, stages)
                    else:
                        paths = run_index(index, filters, stages)
                except BatchTimeLimit:
                    for n, snapshot in zip(positions, saved, strict=True):
                        filters[n] = snapshot
                    _record_unfinished(indices[position:], attempt, record)
                    return outcome
                except Exception as exc:
                    if on_error == "raise":
                        raise
                    for n, snapshot in zip(positions, saved, strict=True):
                        filters[n] = snapshot
                    if policy.retry.should_retry(exc, tries):
                        delay = policy.retry.delay(tries)
                        log.warning("index %s: transient %s (try %d), retrying in %.2fs",
                                    index, type(exc).__name__, tries, delay)
                        time.sleep(delay)
                        tries += 1
                        continue
                    log.warning("index %s failed: %s: %s", index, type(exc).__name__, exc)
                    record(IndexResult(
                        index, error=error_record(exc, attempt, kind=_kind_of(exc), tries=tries),
                        seconds=perf_counter() - start, attempt=attempt, tries=tries,
                    ))
                else:
                    previous = perf_counter() - start
                    record(IndexResult(index, paths, None, previous, attempt, tries, stages,
                                       time.time()))
                break
    finally:
        if deadlines is not None:
            deadlines.close()
        if tracing:
            tracemalloc.stop()
    return outcome


def _kind_of(exc: BaseException) -> str:
    if isinstance(exc, IndexTimeout):
        return "timeout"
    if isinstance(exc, MemoryError):
        return "memory"
    return "error"


def _record_unfinished(
    indices: Sequence[int], attempt: int, record: Callable[[IndexResult], None]
) -> None:
    """Record ``indices`` as failed because the batch time limit ran out."""
    for index in indices:
        exc = BatchTimeLimit(f"the batch time limit ran out before index {index} finished")
        record(IndexResult(index, error=error_record(exc, attempt, kind="batch_time_limit"),
                           attempt=attempt))


def flush_to(f: Filter[Any], path: str) -> str | None:
    """Flush stateful filter ``f`` into ``path``; return the file written, if any.

    ``_output_path`` keeps its type: physicsnemo-curator's filters hold a ``pathlib.Path``
    and call its methods in ``flush()``.
    """
    old = getattr(f, "_output_path", None)
    f._output_path = type(old)(path) if isinstance(old, PurePath) else path  # type: ignore[attr-defined]
    returned = f.flush()  # type: ignore[attr-defined]
    written = os.fspath(returned) if isinstance(returned, str | os.PathLike) else path
    return written if os.path.exists(written) else None


def flush_final(f: Filter[Any], final: str) -> str | None:
    """Flush stateful filter ``f`` straight into its final output ``final``, never partially.

    The flush writes a local temporary file; a local ``final`` is replaced by it in one
    rename, a URL gets its content in one write of the final key (one PUT). Returns
    ``final``, or None when ``flush`` wrote nothing.
    """
    from curator_worker.atomic import scratch_dir, temp_path_for
    from curator_worker.components.storage import upload_file

    if not is_url(final):
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        written = flush_to(f, str(temp_path_for(final)))
        if written is None:
            return None
        os.replace(written, final)
        return final
    with scratch_dir("flush") as folder:
        written = flush_to(f, os.path.join(folder, os.path.basename(final) or "output"))
        if written is None:
            return None
        upload_file(written, final, storage_options_of(f))
    return final


def write_shards(
    pipeline: Pipeline, outcome: BatchOutcome, run_id: str, batch_key: str
) -> dict[str, str]:
    """Flush each stateful filter of ``outcome`` to a shard unique to this attempt.

    See :func:`write_filter_shards`. Returns filter position (as str) -> shard path.
    """
    return write_filter_shards(
        pipeline, outcome.filters, outcome.stateful_positions, run_id, batch_key
    )


def write_filter_shards(
    pipeline: Pipeline,
    filters: Sequence[Filter[Any]],
    positions: Sequence[int],
    run_id: str,
    key: str,
) -> dict[str, str]:
    """Flush the stateful filter copies ``filters[n]`` (``n`` in ``positions``) to shards.

    Each flush goes to a fresh temp path (so a ``flush`` that appends to ``_output_path``
    never appends to an older attempt's file). For a local output the temp file sits in
    the shard folder and is renamed to the shard name only when complete (``os.replace``),
    so a crash never leaves a half-written shard under a shard name. For a URL output
    (object storage has no rename) the flush writes a local temp file which is uploaded to
    the attempt-unique shard key in one write: an object under a shard key is complete or
    absent. Shard names carry host, pid and a random token (:func:`attempt_token`): two
    hosts, containers or attempts never collide; the commit record says which one counts.
    Returns filter position (as str) -> absolute shard path or URL.

    ``run_id`` and ``key`` must be safe names (:func:`is_safe_name`), so every file stays
    in its filter's shard folder; ``ValueError`` otherwise, before anything is written.
    """
    _require_safe_name(run_id, "run id")
    _require_safe_name(key, "batch key")
    token = attempt_token()
    shards: dict[str, str] = {}
    if any(is_url(output_path_of(pipeline.filters[n])) for n in positions):
        from curator_worker.atomic import remove_stale_scratch

        remove_stale_scratch()  # local copies of attempts killed on this host
    for n in positions:
        location = shard_location(output_path_of(pipeline.filters[n]), run_id)
        name = shard_name(key, token)
        if is_url(location):
            from curator_worker.atomic import scratch_dir
            from curator_worker.components.storage import join, upload_file

            with scratch_dir("shard") as folder:
                written = flush_to(filters[n], os.path.join(folder, f"{key}.{token}.tmp"))
                if written is None:
                    continue
                shard = join(location, name)
                options = storage_options_of(pipeline.filters[n])
                upload_file(written, shard, options)
            _remember_options(shard, pipeline.filters[n])
            shards[str(n)] = shard
            continue
        folder = Path(location)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{key}.{token}.tmp"
        written = flush_to(filters[n], str(tmp))
        if written is None:
            continue
        shard_path = folder / name
        os.replace(written, shard_path)
        shards[str(n)] = str(shard_path)
    return shards


def _token_part(text: str) -> str:
    """``text`` with every character a safe name does not allow replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "host"


#: Shard URL -> the filter whose ``storage_options`` wrote it, for the last few shards this
#: process wrote: :func:`discard_files` removes a losing attempt's shard objects with the
#: same options (credentials are resolved again then, never kept here).
_SHARD_WRITERS: dict[str, Filter[Any]] = {}
_SHARD_WRITERS_KEPT = 64


def _remember_options(url: str, f: Filter[Any]) -> None:
    _SHARD_WRITERS[url] = f
    while len(_SHARD_WRITERS) > _SHARD_WRITERS_KEPT:
        del _SHARD_WRITERS[next(iter(_SHARD_WRITERS))]


def discard_files(paths: Sequence[str], options: Mapping[str, Any] | None = None) -> None:
    """Remove files or objects (shards of an attempt that lost the commit race).

    A URL is removed with ``options``, else with the ``storage_options`` of the filter
    that wrote it in this process (best effort: a failure is logged; gather removes what
    is left under the job's shard prefix when the job succeeds).
    """
    urls = [p for p in paths if is_url(p)]
    if urls:
        from curator_worker.components.storage import remove_objects

        for url in urls:
            writer = _SHARD_WRITERS.pop(url, None)
            try:
                found = options if options is not None else (
                    storage_options_of(writer) if writer is not None else {})
            except ValueError as exc:  # a ${VARIABLE} no longer set
                log.warning("cannot remove %s: %s", url, exc)
                continue
            remove_objects([url], found)
    for path in paths:
        if is_url(path):
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
