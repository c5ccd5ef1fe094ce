"""Running one batch: its indices in order, with private copies of its stateful filters.

Every backend runs work through :func:`execute_batch`. A batch gets its own copies of the
pipeline's stateful filters, so state never leaks between batches; a failed index's
contribution to that state is rolled back, so a failed index contributes nothing to merged
results. What the copies hold is then flushed into the batch's shards by
:func:`curator_worker.shards.write_shards`.
"""

from __future__ import annotations

import copy
import logging
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from curator_worker.contract.indices import ints_in_range
from curator_worker.contract.pipeline import Filter, Pipeline, is_stateful
from curator_worker.limits import BatchTimeLimit, Deadlines, IndexTimeout, memory_limit
from curator_worker.memory_tracing import start_tracing, stop_tracing
from curator_worker.outcome import IndexResult, error_record
from curator_worker.policy import BatchPolicy

log = logging.getLogger(__name__)

#: Indices at least this long (seconds) always get per-stage timings.
STAGE_TIMING_ALWAYS = 0.1
#: After an index shorter than :data:`STAGE_TIMING_ALWAYS`, stages are timed on one index
#: in this many. Timing wraps every stage's iterator: microseconds of work per index, more
#: than a microsecond index itself, and on a CPU just woken from a sleeping index about
#: 0.3 % of a 20 ms index (measured); sampling keeps that near zero.
STAGE_TIMING_SAMPLE = 16


@dataclass
class BatchOutcome:
    """What a batch produced: per-index results and its private stateful filters."""

    results: list[IndexResult]
    filters: list[Filter[Any]]
    stateful_positions: list[int] = field(default_factory=list)
    stopped_early: bool = False


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

    tracing = start_tracing() if trace_memory else False

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
        stop_tracing(tracing)
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

