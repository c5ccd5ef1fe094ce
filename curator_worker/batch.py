"""Running one batch: its indices in order, its stateful filters' shard, nothing shared.

Every backend runs work through :func:`execute_batch`. A batch gets its own copies of the
pipeline's stateful filters, so state never leaks between batches; a failed index's
contribution to that state is rolled back, so a failed index contributes nothing to merged
results. :func:`write_shards` then flushes each stateful filter to a fresh temp path and
renames it to a shard name unique to this attempt (host, pid and a random token), so two
hosts, containers or attempts can never collide.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator_worker.errors import PipelineError
from curator_worker.pipeline import Filter, Pipeline, is_stateful

log = logging.getLogger(__name__)

HOSTNAME = socket.gethostname()
SHARD_SUFFIX = ".shard"


@dataclass
class IndexResult:
    """The outcome of one index: the sink's paths, or the error."""

    index: int
    paths: list[str] | None = None
    error: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the index succeeded."""
        return self.error is None

    def as_record(self) -> dict[str, Any]:
        """The JSON record stored in the job store."""
        if self.error is not None:
            return {"error": self.error, "seconds": round(self.seconds, 6)}
        return {"paths": self.paths, "seconds": round(self.seconds, 6)}


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


def error_record(exc: BaseException, attempt: int = 1, kind: str = "error") -> dict[str, Any]:
    """A JSON-ready description of ``exc``: type, message, traceback, attempt, host, pid."""
    return {
        "kind": kind,
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
        "attempt": attempt,
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
    """Folder of the shards of one run (job) for a stateful filter's output."""
    return Path(f"{final_output}.shards") / run_id


def execute_batch(
    pipeline: Pipeline,
    indices: Sequence[int],
    *,
    on_error: str = "record",
    attempt: int = 1,
    should_stop: Callable[[], bool] | None = None,
    on_index: Callable[[IndexResult], None] | None = None,
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
        Delivery attempt, stored with errors.
    should_stop : callable, optional
        Checked before each index; when it returns True the batch stops early.
    on_index : callable, optional
        Called with each :class:`IndexResult` as it completes (progress).

    Returns
    -------
    BatchOutcome
    """
    pipeline.require_sink()
    positions = [n for n, f in enumerate(pipeline.filters) if is_stateful(f)]
    filters = list(pipeline.filters)
    for n in positions:
        filters[n] = copy.deepcopy(filters[n])
    results: list[IndexResult] = []
    outcome = BatchOutcome(results=results, filters=filters, stateful_positions=positions)
    for index in indices:
        if should_stop is not None and should_stop():
            outcome.stopped_early = True
            break
        saved = [copy.deepcopy(filters[n]) for n in positions]
        start = time.perf_counter()
        try:
            paths = pipeline.run_index(index, filters)
        except Exception as exc:
            if on_error == "raise":
                raise
            for n, snapshot in zip(positions, saved, strict=True):
                filters[n] = snapshot
            log.warning("index %s failed: %s: %s", index, type(exc).__name__, exc)
            results.append(
                IndexResult(index, error=error_record(exc, attempt),
                            seconds=time.perf_counter() - start)
            )
        else:
            results.append(IndexResult(index, paths=paths, seconds=time.perf_counter() - start))
        if on_index is not None:
            on_index(results[-1])
    return outcome


def flush_to(f: Filter[Any], path: str) -> str | None:
    """Flush stateful filter ``f`` into ``path``; return the file written, if any."""
    f._output_path = path  # type: ignore[attr-defined]
    returned = f.flush()  # type: ignore[attr-defined]
    written = os.fspath(returned) if isinstance(returned, str | os.PathLike) else path
    return written if os.path.exists(written) else None


def write_shards(
    pipeline: Pipeline, outcome: BatchOutcome, run_id: str, batch_key: str
) -> dict[str, str]:
    """Flush each stateful filter of ``outcome`` to a shard unique to this attempt.

    Each flush goes to a fresh temp path that is renamed to the shard name only when
    complete (``os.replace``), so a crash never leaves a half-written shard under a shard
    name. Returns filter position (as str) -> shard path.
    """
    token = f"{HOSTNAME}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shards: dict[str, str] = {}
    for n in outcome.stateful_positions:
        final = output_path_of(pipeline.filters[n])
        folder = shard_dir(final, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{batch_key}.{token}.tmp"
        written = flush_to(outcome.filters[n], str(tmp))
        if written is None:
            continue
        shard = folder / f"{batch_key}.{token}{SHARD_SUFFIX}"
        os.replace(written, shard)
        shards[str(n)] = str(shard)
    return shards


def discard_files(paths: Sequence[str]) -> None:
    """Remove files (shards of an attempt that lost the commit race)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
