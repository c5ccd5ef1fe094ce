"""What the local parallel backends (``thread``, ``process_pool``, ``loky``, ``dask``) share.

Every local parallel run goes the same way, whatever dispatches the work:

1. **Plan.** The run's indices are grouped with :meth:`Pipeline.partition_groups` (source
   and sink partitions intersected; a group is never split) and packed into batches with
   :func:`~curator_worker.contract.planning.pack_groups`.
2. **Run batches.** Each batch runs in a worker through
   :func:`~curator_worker.batch.execute_batch` with private copies of the stateful filters
   (a failed index is rolled back, the batch goes on), then flushes each stateful filter to
   a shard named ``<output>.shards/<run id>/<batch key>.<host>-<pid>-<token>.shard``. The run
   id is a fresh uuid, so two hosts, containers or runs can never collide (not by PID alone).
   For a URL output (``s3://…``) the shard is an object under the same name, uploaded in
   one write; the merged output is written in one write too.
3. **Gather.** At the end the parent merges each stateful filter's shards, in batch order,
   with the filter's ``merge`` into its final output (atomically) and removes the shard
   folders. With the backend option ``gather=False`` the shards are left for a
   physicsnemo-style :func:`~curator_worker.gather.gather_pipeline` call.
4. **Report.** Results come back in the caller's index order. Failed indices are raised at
   the end as one :class:`~curator_worker.errors.JobFailedError` listing every failed index,
   or, with ``on_error="collect"``, returned in a :class:`RunResult`.

Options every local parallel backend accepts (``run_pipeline(..., **options)``):

``batch_size`` : int, optional
    Indices per batch (default: about four batches per worker, see
    :func:`~curator_worker.contract.planning.auto_batch_size`). ``1`` gives per-index tasks.
``gather`` : bool, default True
    Merge stateful filters' shards at the end of the run.
``on_error`` : {"raise", "collect"}, default "raise"
    ``raise``: after the run (and its gather), raise ``JobFailedError(run_id, "partial",
    {index: "Type: message"})``. ``collect``: return a :class:`RunResult` whose failed
    entries are ``[]`` and whose ``failures`` / ``errors`` describe them.

Unknown options raise ``TypeError``. ``run_pipeline(..., n_jobs=1)`` runs ``sequential``
unless options are given; with options the named backend runs with one worker (the
sequential backend could not honour them). A stateful filter whose every batch failed (or
whose ``flush`` wrote nothing) has no shard, and its ``merge`` is not called.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from curator_worker.batch import execute_batch
from curator_worker.contract.pipeline import Pipeline, is_stateful
from curator_worker.contract.planning import auto_batch_size, pack_groups
from curator_worker.errors import JobFailedError
from curator_worker.metrics import safe_record_results, stage_names
from curator_worker.outcome import HOSTNAME, IndexResult, error_record
from curator_worker.progress import ProgressReporter
from curator_worker.run import RunBackend, RunConfig
from curator_worker.shards import (
    is_url,
    merge_shards,
    output_path_of,
    remove_shard_location,
    shard_location,
    storage_options_of,
    write_filter_shards,
)

log = logging.getLogger(__name__)

#: Options every local parallel backend accepts.
COMMON_OPTIONS: frozenset[str] = frozenset({"batch_size", "gather", "on_error"})
#: Values of the ``on_error`` option.
ON_ERROR_MODES = ("raise", "collect")


class RunResult(list):  # type: ignore[type-arg]
    """The sink paths of each index, in the caller's order, plus the run's failures.

    A ``list[list[str]]`` like every backend returns (it compares equal to a plain list);
    a failed index's entry is ``[]``. Local parallel backends return it; with the default
    ``on_error="raise"`` it is only returned when nothing failed.

    Attributes
    ----------
    run_id : str
        The run's id (the folder name of its shards).
    failures : dict[int, str]
        Failed index to ``"Type: message"`` (the same shape as
        :attr:`JobFailedError.failures`).
    errors : dict[int, dict]
        Failed index to its full record: ``kind`` (``error``, ``timeout`` or ``crash``),
        ``type``, ``message``, ``traceback``, ``host``, ``pid``.

    Examples
    --------
    >>> result = RunResult([["a.npz"], []], run_id="r1", errors={1: {"type": "E", "message": "m"}})
    >>> result == [["a.npz"], []], result.failures
    (True, {1: 'E: m'})
    """

    def __init__(
        self,
        paths: Sequence[list[str]] = (),
        *,
        run_id: str = "",
        errors: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(paths)
        self.run_id = run_id
        self.errors: dict[int, dict[str, Any]] = dict(errors or {})

    @property
    def failures(self) -> dict[int, str]:
        """Failed index to ``"Type: message"``."""
        return {i: describe(record) for i, record in self.errors.items()}

    @property
    def ok(self) -> bool:
        """True when no index failed."""
        return not self.errors


def describe(record: Mapping[str, Any]) -> str:
    """``"Type: message"`` of an error record."""
    return f"{record.get('type', 'Error')}: {record.get('message', '')}"


def failure_record(
    kind: str, type_name: str, message: str, pid: int | None = None
) -> dict[str, Any]:
    """An error record for a failure seen by the parent (a timeout, a crashed worker)."""
    return {
        "kind": kind,
        "type": type_name,
        "message": message,
        "traceback": "",
        "attempt": 1,
        "host": HOSTNAME,
        "pid": pid,
    }


@dataclass(frozen=True)
class LocalOptions:
    """The parsed options of a local parallel run.

    Attributes
    ----------
    batch_size : int | None
        Indices per batch, or ``None`` for automatic.
    gather : bool
        Merge shards at the end of the run.
    on_error : str
        ``raise`` or ``collect``.
    extra : dict
        The backend's own options.
    """

    batch_size: int | None = None
    gather: bool = True
    on_error: str = "raise"
    extra: dict[str, Any] = field(default_factory=dict)


def parse_options(
    backend: str, kwargs: Mapping[str, Any], own: frozenset[str] = frozenset(),
    common: frozenset[str] = COMMON_OPTIONS,
) -> LocalOptions:
    """Validate the keyword options given to backend ``backend``.

    ``common`` are the shared options it accepts besides ``own`` (the ``sequential``
    backend takes ``on_error`` alone, as one of ``own``).

    Raises
    ------
    TypeError
        For an option the backend does not know (the message lists the known ones).
    ValueError
        For a bad value of ``batch_size``, ``gather`` or ``on_error``.
    """
    known = common | own
    unknown = set(kwargs) - known
    if unknown:
        raise TypeError(
            f"Unknown {backend} backend option(s): {', '.join(sorted(unknown))}. "
            f"Known options: {', '.join(sorted(known))}."
        )
    batch_size = kwargs.get("batch_size")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    gather = kwargs.get("gather", True)
    if not isinstance(gather, bool):
        raise ValueError(f"gather must be True or False, got {gather!r}.")
    on_error = kwargs.get("on_error", "raise")
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be 'raise' or 'collect', got {on_error!r}.")
    extra = {k: v for k, v in kwargs.items() if k in own and k not in COMMON_OPTIONS}
    return LocalOptions(batch_size=batch_size, gather=gather, on_error=on_error, extra=extra)


# --------------------------------------------------------------------------- work units


@dataclass(frozen=True)
class WorkUnit:
    """A batch (or the re-run of what is left of one) to run in one worker.

    Attributes
    ----------
    key : str
        Batch key (``b000003``; a re-run appends ``-r1``, ``-r2``...), part of shard names.
    indices : list[int]
        The indices, in order.
    order : tuple[int, int]
        (batch number, re-run number): shards are merged in this order.
    """

    key: str
    indices: list[int]
    order: tuple[int, int] = (0, 0)

    def rerun(self, indices: list[int]) -> WorkUnit:
        """A unit that re-runs ``indices`` of this one under a fresh key."""
        number = self.order[1] + 1
        base = self.key.split("-r")[0]
        return WorkUnit(f"{base}-r{number}", list(indices), (self.order[0], number))


@dataclass
class BatchReport:
    """What a worker sends back for a unit: per-index results and its committed shards.

    Attributes
    ----------
    key : str
        The unit's key.
    results : list[IndexResult]
        One per index that ran, in order.
    shards : dict[str, str]
        Filter position (as str) to the absolute path of its shard.
    """

    key: str
    results: list[IndexResult]
    shards: dict[str, str] = field(default_factory=dict)


def plan_units(pipeline: Pipeline, indices: Sequence[int], batch_size: int) -> list[WorkUnit]:
    """Batches of ``indices`` honouring the pipeline's partitions, as work units."""
    groups = pipeline.partition_groups(list(indices))
    return [
        WorkUnit(f"b{number:06d}", batch, (number, 0))
        for number, batch in enumerate(pack_groups(groups, batch_size))
    ]


def run_unit(
    pipeline: Pipeline,
    key: str,
    indices: Sequence[int],
    run_id: str,
    *,
    on_index: Callable[[IndexResult], None] | None = None,
    before_index: Callable[[int], None] | None = None,
) -> BatchReport:
    """Run one unit in this worker: its indices (errors recorded), then its shards.

    Parameters
    ----------
    pipeline : Pipeline
        The pipeline (never mutated: stateful filters are copied per unit).
    key : str
        The unit's key.
    indices : Sequence[int]
        The unit's indices, in order.
    run_id : str
        The run's id (shard folder).
    on_index : callable, optional
        Called with each :class:`IndexResult` as it completes.
    before_index : callable, optional
        Called with each index just before it starts.

    Returns
    -------
    BatchReport
        If flushing a stateful filter fails, every index of the unit is reported failed
        (their contributions to the filter's state are lost) and no shard is kept.
    """
    tracked = pipeline.track_metrics
    outcome = execute_batch(
        pipeline, list(indices), on_error="record", on_start=before_index, on_index=on_index,
        timings="all" if tracked else False, trace_memory=tracked and pipeline.track_memory,
    )
    try:
        shards = write_filter_shards(
            pipeline, outcome.filters, outcome.stateful_positions, run_id, key
        )
    except Exception as exc:  # noqa: BLE001 - a user's flush failing fails the unit
        log.warning("batch %s: flushing filter shards failed: %s: %s", key,
                    type(exc).__name__, exc)
        record = error_record(exc, kind="error")
        record["message"] = f"flushing the batch's filter state failed: {record['message']}"
        failed = [
            r if not r.ok else IndexResult(r.index, error=dict(record), seconds=r.seconds)
            for r in outcome.results
        ]
        return BatchReport(key, failed, {})
    return BatchReport(key, outcome.results, shards)


# Worker processes unpickle the pipeline once per run, not once per batch.
_PIPELINE_CACHE: dict[str, Pipeline] = {}
_CACHE_LOCK = threading.Lock()


def pipeline_payload(pipeline: Pipeline) -> bytes:
    """``pipeline`` pickled with cloudpickle (closures and lambdas included)."""
    import cloudpickle

    return cloudpickle.dumps(pipeline)


def cached_pipeline(run_id: str, payload: bytes) -> Pipeline:
    """The pipeline of ``run_id`` in this worker process (unpickled on first use)."""
    with _CACHE_LOCK:
        pipeline = _PIPELINE_CACHE.get(run_id)
        if pipeline is None:
            pipeline = pickle.loads(payload)
            _PIPELINE_CACHE.clear()  # one run at a time per worker process
            _PIPELINE_CACHE[run_id] = pipeline
        return pipeline


def run_unit_from_payload(
    payload: bytes, run_id: str, key: str, indices: list[int]
) -> BatchReport:
    """Task function of the pool backends: run one unit of a pickled pipeline."""
    return run_unit(cached_pipeline(run_id, payload), key, indices, run_id)


# --------------------------------------------------------------------------- the run


class LocalRun:
    """Book-keeping of one local parallel run: plan, results, shards, progress, gather.

    Backends call :meth:`index_finished` (progress, any thread), :meth:`commit` (a unit's
    final results and shards), :meth:`fail` (an index failed outside ``execute_batch``:
    timeout, crash) and :meth:`fail_unit`, then :meth:`finish`.

    Parameters
    ----------
    backend : str
        The backend's name (for messages and the run id).
    pipeline : Pipeline
        The pipeline.
    config : RunConfig
        The run's configuration.
    options : LocalOptions
        Parsed options.
    """

    def __init__(
        self, backend: str, pipeline: Pipeline, config: RunConfig, options: LocalOptions
    ) -> None:
        self.backend = backend
        self.pipeline = pipeline
        self.config = config
        self.options = options
        self.run_id = f"{backend}-{uuid.uuid4().hex}"
        self.indices = (list(range(len(pipeline))) if config.indices is None
                        else list(config.indices))
        self.stateful = [n for n, f in enumerate(pipeline.filters) if is_stateful(f)]
        self.finals = {n: output_path_of(pipeline.filters[n]) for n in self.stateful}
        self.n_jobs = config.resolved_n_jobs
        size = options.batch_size or auto_batch_size(len(self.indices), self.n_jobs)
        self.units = plan_units(pipeline, self.indices, size)
        self.results: dict[int, IndexResult] = {}
        self.shards: dict[int, list[tuple[tuple[int, int], str]]] = {n: [] for n in self.stateful}
        self._lock = threading.Lock()
        self._done: set[int] = set()
        self._failed: set[int] = set()
        self._progress = ProgressReporter(len(self.indices), config.progress, label=backend)
        self._names = stage_names(pipeline) if pipeline.track_metrics else {}
        log.debug("%s run %s: %d indices in %d batches", backend, self.run_id,
                  len(self.indices), len(self.units))

    def __enter__(self) -> LocalRun:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.update(len(self._done), len(self._failed), force=True)
        self._progress.__exit__(None, None, None)

    # -- events ---------------------------------------------------------------------

    def index_finished(self, result: IndexResult) -> None:
        """Count one finished index for progress (safe from any thread; idempotent)."""
        with self._lock:
            if result.ok:
                self._failed.discard(result.index)
                self._done.add(result.index)
            else:
                self._done.discard(result.index)
                self._failed.add(result.index)
            self._progress.update(len(self._done), len(self._failed))

    def commit(self, unit: WorkUnit, report: BatchReport) -> None:
        """Record a unit's results and shards as final."""
        with self._lock:
            for n_str, path in report.shards.items():
                self.shards.setdefault(int(n_str), []).append((unit.order, path))
        for result in report.results:
            self.results[result.index] = result
            self.index_finished(result)
        self._record(report.results)

    def _record(self, results: Sequence[IndexResult]) -> None:
        """Record ``results`` in the pipeline's metrics store (with ``track_metrics``)."""
        if self.pipeline.track_metrics:
            safe_record_results(self.pipeline, results, self._names)

    def fail(self, index: int, record: dict[str, Any]) -> None:
        """Record ``index`` as failed with ``record`` (it contributes no filter state)."""
        log.warning("%s run %s: index %d failed: %s", self.backend, self.run_id, index,
                    describe(record))
        result = IndexResult(index, error=record)
        self.results[index] = result
        self.index_finished(result)
        self._record([result])

    def fail_unit(self, unit: WorkUnit, exc: BaseException) -> None:
        """Record every index of ``unit`` as failed because running the unit raised."""
        record = error_record(exc, kind="error")
        for index in unit.indices:
            self.fail(index, dict(record))

    def collect(
        self,
        futures: Mapping[Any, WorkUnit],
        completed: Callable[[Iterable[Any]], Iterable[Any]],
    ) -> None:
        """Commit each unit's report as its future completes; a raising future fails it.

        ``completed`` is the executor's ``as_completed`` (concurrent.futures' or dask's).
        """
        for future in completed(futures):
            unit = futures[future]
            try:
                report = future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker (KilledWorker, ...)
                self.fail_unit(unit, exc)
            else:
                self.commit(unit, report)

    # -- the end --------------------------------------------------------------------

    def gather(self) -> list[str]:
        """Merge this run's shards into each stateful filter's output; remove the shards.

        A filter with no shard (every index failed, or ``flush`` wrote nothing) is left
        unmerged. Shards are removed only after a successful merge.
        """
        written = []
        for n in self.stateful:
            shards = [path for _, path in sorted(self.shards.get(n, []))]
            if shards:
                written.append(merge_shards(self.pipeline.filters[n], shards, self.finals[n]))
                log.info("%s run %s: merged %d shards into %s", self.backend, self.run_id,
                         len(shards), self.finals[n])
            # shards are always written under the run's shard location (write_shards)
            remove_shard_location(self.pipeline.filters[n], self.run_id)
        return written

    def prune_uncommitted(self) -> None:
        """Remove files of this run's shard folders that no committed unit reported.

        A worker lost after renaming its shard but before reporting it (killed, or a dask
        task re-run elsewhere) leaves a shard whose indices are failed or counted again;
        so that :func:`~curator_worker.gather.gather_pipeline` merges only committed
        shards, such files (and stray temp files) are removed when ``gather=False``. A URL
        output's shard prefix is listed and its uncommitted objects removed the same way.
        """
        for n in self.stateful:
            location = shard_location(self.finals[n], self.run_id)
            if is_url(location):
                from curator_worker.components.storage import list_objects, remove_objects

                committed_urls = {path for _, path in self.shards.get(n, [])}
                options = storage_options_of(self.pipeline.filters[n])
                strays = [url for url in list_objects(location + "/", options)
                          if url not in committed_urls]
                for stray in strays:
                    log.warning("%s run %s: removing uncommitted shard object %s",
                                self.backend, self.run_id, stray)
                remove_objects(strays, options)
                continue
            committed = {os.path.abspath(path) for _, path in self.shards.get(n, [])}
            folders = {Path(path).parent for path in committed}
            folders.add(Path(location))
            for folder in folders:
                for stray in folder.glob("*"):
                    if stray.is_file() and os.path.abspath(stray) not in committed:
                        log.warning("%s run %s: removing uncommitted shard file %s",
                                    self.backend, self.run_id, stray)
                        stray.unlink(missing_ok=True)

    def finish(self) -> RunResult:
        """Gather (unless ``gather=False``) and return the results, or raise the failures.

        Raises
        ------
        JobFailedError
            With ``on_error="raise"`` when some index failed: ``state="partial"`` and
            ``failures`` listing every failed index. Shards of the indices that succeeded
            are merged first.
        """
        for index in self.indices:
            if index not in self.results:  # a bug, never silently dropped
                self.fail(index, failure_record(
                    "error", "LostIndexError", f"index {index} never reported a result"))
        if self.options.gather:
            self.gather()
        else:
            self.prune_uncommitted()
        errors = {
            i: self.results[i].error for i in self.indices if self.results[i].error is not None
        }
        paths = [list(self.results[i].paths or []) for i in self.indices]
        result = RunResult(paths, run_id=self.run_id, errors=errors)  # type: ignore[arg-type]
        if errors and self.options.on_error == "raise":
            raise JobFailedError(
                self.run_id, "partial", result.failures,
                f"local {self.backend} run; pass on_error='collect' to get the results "
                "with the failures instead", in_job_store=False,
            )
        return result


class LocalBackend(RunBackend):
    """Base class of the local parallel backends: options, planning, gather, failures.

    Subclasses set :attr:`options` (their own keyword options) and implement
    :meth:`execute`, which runs every unit of ``run.units`` and reports each through
    ``run.commit`` / ``run.fail`` / ``run.fail_unit``.
    """

    #: The backend's own keyword options, besides :data:`COMMON_OPTIONS`.
    options: ClassVar[frozenset[str]] = frozenset()

    def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
        """Plan, run every batch, gather, and return the sink paths in the caller's order.

        Returns
        -------
        RunResult
            A ``list[list[str]]`` with ``failures`` (see :class:`RunResult`).
        """
        pipeline.require_sink()
        options = parse_options(self.name, config.backend_options, self.options)
        self.check_options(options)
        with LocalRun(self.name, pipeline, config, options) as run:
            self.execute(run)
        return run.finish()

    def check_options(self, options: LocalOptions) -> None:
        """Validate the backend's own options before anything starts (override)."""

    @abstractmethod
    def execute(self, run: LocalRun) -> None:
        """Run every unit of ``run.units``."""
