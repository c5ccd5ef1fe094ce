"""What a pipeline remembers of its runs: physicsnemo-curator's metrics API.

:class:`RecordedRuns` gives :class:`~curator_worker.contract.pipeline.Pipeline` its
``metrics``, ``completed_indices``, ``failed_indices``, ``remaining_indices``,
``output_paths_for_index`` and ``reset``, read from the pipeline's metrics store
(:mod:`curator_worker.metrics_store`); :func:`run_recorded` is ``pipeline[i]`` with
``track_metrics``: one index run with its stage timings, peak memory and outcome recorded.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curator_worker.errors import PipelineError
from curator_worker.memory_tracing import start_tracing, stop_tracing
from curator_worker.metrics import (
    PipelineMetrics,
    default_db_dir,
    pipeline_key,
    record_of,
    safe_record,
    stage_names,
)
from curator_worker.metrics_store import MetricsStore
from curator_worker.outcome import IndexResult, error_record

if TYPE_CHECKING:
    from curator_worker.contract.pipeline import Pipeline


class PipelineStateError(PipelineError, RuntimeError):
    """A pipeline is asked for something it is not set up for (no sink, metrics off).

    A ``RuntimeError`` too, as physicsnemo-curator raises in these cases.
    """


class RecordedRuns:
    """The metrics side of a pipeline: a base of ``Pipeline``, which holds the state it
    reads (``_track_metrics``, ``_db_dir``, ``_db_file``, ``_store``, ``_invocation``)."""

    __slots__ = ()
    _track_metrics: bool
    _db_dir: Any
    _db_file: Any
    _store: Any
    _invocation: str

    @property
    def db_path(self) -> Path | None:
        """The metrics store file, or ``None`` when ``track_metrics`` is off."""
        if not self._track_metrics:
            return None
        if self._db_file is not None:
            return Path(self._db_file)
        folder = Path(self._db_dir) if self._db_dir is not None else default_db_dir()
        return folder / f"{pipeline_key(self)}.db"

    def metrics_store(self) -> MetricsStore:
        """The metrics store of this pipeline (opened on first use).

        Raises
        ------
        PipelineStateError
            If ``track_metrics`` is off.
        """
        if not self._track_metrics:
            raise PipelineStateError(
                "Pipeline metrics are disabled (track_metrics=False). Set "
                "pipeline.track_metrics = True before running to record them."
            )
        store = self._store
        if store is None or not hasattr(store, "record"):
            store = MetricsStore(self.db_path)  # type: ignore[arg-type]
            object.__setattr__(self, "_store", store)
        return store

    _get_store = metrics_store  # physicsnemo-curator's name

    @property
    def metrics(self) -> PipelineMetrics:
        """Per-index, per-stage metrics of the indices this pipeline completed.

        Raises
        ------
        PipelineStateError
            (a ``RuntimeError``) if ``track_metrics`` is off.
        """
        return self.metrics_store().metrics(self._invocation)

    @property
    def completed_indices(self) -> set[int]:
        """Indices this pipeline completed (a ``RuntimeError`` if metrics are off)."""
        return set(self.metrics_store().completed(self._invocation))

    @property
    def failed_indices(self) -> dict[int, str]:
        """Indices this pipeline failed, with ``"Type: message"``."""
        return self.metrics_store().failed(self._invocation)

    def remaining_indices(self) -> list[int]:
        """Indices this pipeline has neither completed nor failed."""
        store = self.metrics_store()
        seen = set(store.completed(self._invocation)) | set(store.failed(self._invocation))
        return [i for i in range(len(self)) if i not in seen]

    def output_paths_for_index(self, index: int) -> list[str]:
        """The sink paths this pipeline recorded for ``index`` (``[]`` if none)."""
        return self.metrics_store().completed(self._invocation).get(index, [])

    def reset(self) -> None:
        """Forget this pipeline's records (other runs' records stay for resume)."""
        self.metrics_store().reset(self._invocation)


def run_recorded(pipeline: Pipeline, index: int) -> list[str]:
    """``pipeline[index]`` with ``track_metrics``: run the index and record its stage
    timings, peak memory and outcome (a store that cannot be written only logs a warning).
    """
    pipeline.require_sink()
    index = pipeline.check_index(index)

    timings: dict[str, float] = {}
    tracing = start_tracing() if pipeline.track_memory else False
    if pipeline.track_memory and not tracing:
        tracemalloc.reset_peak()
    start = time.perf_counter()
    try:
        paths = pipeline.run_valid_index(index, None, timings)
    except Exception as exc:
        result = IndexResult(index, error=error_record(exc),
                             seconds=time.perf_counter() - start)
        safe_record(pipeline, [record_of(result, stage_names(pipeline))])
        raise
    else:
        result = IndexResult(index, paths, seconds=time.perf_counter() - start,
                             stages=timings)
        if pipeline.track_memory:
            result.peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        safe_record(pipeline, [record_of(result, stage_names(pipeline))])
        return paths
    finally:
        stop_tracing(tracing)
