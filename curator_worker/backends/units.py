"""Work units of the local parallel backends: a batch (or the re-run of what is left of
one), how it is planned, and how one worker runs it (:func:`run_unit`: its indices through
:func:`~curator_worker.batch.execute_batch`, then its stateful filters' shards)."""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from curator_worker.batch import execute_batch
from curator_worker.contract.pipeline import Pipeline
from curator_worker.contract.planning import pack_groups
from curator_worker.outcome import IndexResult, error_record
from curator_worker.shards import write_filter_shards

log = logging.getLogger(__name__)



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
