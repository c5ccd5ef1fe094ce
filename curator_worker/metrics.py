"""Per-index metrics and checkpoints of pipeline runs, in a local SQLite store.

A pipeline with ``track_metrics=True`` (the default, as in physicsnemo-curator) records,
for every index it runs on any backend, the wall time of each stage (``source``, each
filter by its ``name``, ``sink``), the index's wall time and peak Python memory
(``tracemalloc``, when ``track_memory``), and the sink's paths or the error. The local
backends record what their workers report, one store row per batch; the ``celery``
backend copies the job store's batch blobs when the job ends, as they are (the store is
:class:`~curator_worker.metrics_store.MetricsStore`; it decodes batches when read).
:attr:`Pipeline.metrics` reads them back as :class:`PipelineMetrics`, and
``run_pipeline(..., resume=True)`` skips the indices a previous run of the same pipeline
(same components, same params) completed.

One SQLite file per pipeline configuration, ``<db_dir>/<config hash>.db``; ``db_dir`` is
the pipeline's, else ``$CURATOR_DB_DIR``, else ``$XDG_CACHE_HOME/curator-worker`` (default
``~/.cache/curator-worker``). Each pipeline object records under its own invocation id, so
:attr:`Pipeline.metrics` shows what that pipeline ran, while resume looks at every run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curator_worker.contract.spec import pipeline_to_spec, spec_hash
from curator_worker.errors import CuratorError

if TYPE_CHECKING:
    from curator_worker.contract.pipeline import Pipeline
    from curator_worker.outcome import IndexResult

log = logging.getLogger(__name__)

#: Environment variable naming the folder of metrics stores (when a pipeline has no db_dir).
DB_DIR_ENV = "CURATOR_DB_DIR"


# --------------------------------------------------------------------------- metrics shape


@dataclass
class StageMetrics:
    """Wall time of one stage of one index: ``source``, a filter (by name) or ``sink``."""

    name: str
    wall_time_ns: int

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "wall_time_ns"}``."""
        return {"name": self.name, "wall_time_ns": self.wall_time_ns}


@dataclass
class IndexMetrics:
    """What one index cost.

    Attributes
    ----------
    index : int
        The source index.
    stages : list[StageMetrics]
        Per-stage wall time, in pipeline order (empty when the backend did not time
        stages for this index: the celery backend times one fast index in 16).
    wall_time_ns : int
        The index's wall time.
    peak_memory_bytes : int
        Peak Python memory while it ran (``tracemalloc``; 0 when not tracked).
    gpu_memory_bytes : int | None
        Not measured (``None``).
    """

    index: int
    stages: list[StageMetrics]
    wall_time_ns: int
    peak_memory_bytes: int = 0
    gpu_memory_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "index": self.index,
            "stages": [s.to_dict() for s in self.stages],
            "wall_time_ns": self.wall_time_ns,
            "peak_memory_bytes": self.peak_memory_bytes,
            "gpu_memory_bytes": self.gpu_memory_bytes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IndexMetrics:
        """The inverse of :meth:`to_dict`."""
        return cls(
            index=int(data["index"]),
            stages=[StageMetrics(str(s["name"]), int(s["wall_time_ns"]))
                    for s in data.get("stages", [])],
            wall_time_ns=int(data.get("wall_time_ns", 0)),
            peak_memory_bytes=int(data.get("peak_memory_bytes", 0)),
            gpu_memory_bytes=data.get("gpu_memory_bytes"),
        )


@dataclass
class PipelineMetrics:
    """The metrics of every index a pipeline completed, in index order.

    Examples
    --------
    >>> m = PipelineMetrics([IndexMetrics(0, [], 2_000), IndexMetrics(1, [], 4_000, 10)])
    >>> m.total_wall_time_ns, m.mean_index_time_ns, m.total_peak_memory_bytes
    (6000, 3000.0, 10)
    """

    indices: list[IndexMetrics] = field(default_factory=list)

    @property
    def total_wall_time_ns(self) -> int:
        """Sum of the indices' wall times."""
        return sum(m.wall_time_ns for m in self.indices)

    @property
    def mean_index_time_ns(self) -> float:
        """Mean wall time per index (0.0 when there is none)."""
        return self.total_wall_time_ns / len(self.indices) if self.indices else 0.0

    @property
    def total_peak_memory_bytes(self) -> int:
        """The highest peak memory of any index."""
        return max((m.peak_memory_bytes for m in self.indices), default=0)

    def stage_totals_ns(self) -> dict[str, int]:
        """Total wall time per stage name, in first-seen order."""
        totals: dict[str, int] = {}
        for m in self.indices:
            for s in m.stages:
                totals[s.name] = totals.get(s.name, 0) + s.wall_time_ns
        return totals

    def summary(self) -> dict[str, Any]:
        """Totals and the per-index records, as one JSON-ready dict."""
        return {
            "num_indices": len(self.indices),
            "total_wall_time_ns": self.total_wall_time_ns,
            "mean_index_time_ns": self.mean_index_time_ns,
            "total_peak_memory_bytes": self.total_peak_memory_bytes,
            "indices": [m.to_dict() for m in self.indices],
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`summary` as JSON."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.summary(), indent=2))

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """One row per index; each stage's wall time in a ``stage_<name>_ns`` column."""
        names = list(self.stage_totals_ns())
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["index", "wall_time_ns", "peak_memory_bytes", "gpu_memory_bytes",
                             *(f"stage_{n}_ns" for n in names)])
            for m in self.indices:
                stages = {s.name: s.wall_time_ns for s in m.stages}
                writer.writerow([m.index, m.wall_time_ns, m.peak_memory_bytes,
                                 "" if m.gpu_memory_bytes is None else m.gpu_memory_bytes,
                                 *(stages.get(n, "") for n in names)])


# --------------------------------------------------------------------------- records


@dataclass
class IndexRecord:
    """One index's outcome as stored: paths or error, wall time, memory, stages."""

    index: int
    paths: list[str] | None = None
    error: str | None = None
    wall_time_ns: int = 0
    peak_memory_bytes: int = 0
    stages: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the index succeeded."""
        return self.error is None


def stage_names(pipeline: Pipeline) -> dict[str, str]:
    """Our stage keys (``filter[0]:ClassName``) to physicsnemo's names (the filter's ``name``)."""
    names = {"source": "source", "sink": "sink"}
    for n, f in enumerate(pipeline.filters):
        cls = type(f)
        label = getattr(cls, "name", "") if isinstance(getattr(cls, "name", ""), str) else ""
        if not label:
            label = getattr(f, "__name__", "") or cls.__name__
        names[f"filter[{n}]:{cls.__name__}"] = label
    return names


def stage_order(name: str) -> tuple[int, int, str]:
    """Sort key putting stage keys in pipeline order: source, ``filter[i]:Name``..., sink.

    Examples
    --------
    >>> sorted(["sink", "filter[1]:B", "source", "filter[0]:A"], key=stage_order)
    ['source', 'filter[0]:A', 'filter[1]:B', 'sink']
    """
    if name == "source":
        return (0, 0, name)
    match = re.match(r"filter\[(\d+)\]", name)
    if match:
        return (1, int(match.group(1)), name)
    return (2, 0, name) if name == "sink" else (3, 0, name)


def _stages(stages: Mapping[str, float] | None, names: Mapping[str, str]) -> list[tuple[str, int]]:
    return [(names.get(key, key), round(seconds * 1e9)) for key, seconds in (stages or {}).items()]


def record_of(result: IndexResult, names: Mapping[str, str]) -> IndexRecord:
    """An :class:`IndexRecord` from a backend's :class:`~curator_worker.batch.IndexResult`."""
    error = None
    if result.error is not None:
        error = f"{result.error.get('type', 'Error')}: {result.error.get('message', '')}"
    return IndexRecord(
        index=result.index,
        paths=list(result.paths or []) if error is None else None,
        error=error,
        wall_time_ns=round(result.seconds * 1e9),
        peak_memory_bytes=round((result.peak_mb or 0.0) * 2**20),
        stages=_stages(result.stages, names),
    )


#: One index as the metrics store keeps it: index, ok (0/1), paths JSON (``None`` when it
#: failed), error, wall time ns, peak memory bytes, stages JSON.
MetricRow = tuple[int, int, str | None, str | None, int, int, str]


def rows_of(records: Iterable[IndexRecord]) -> list[MetricRow]:
    """The metrics store's rows (:data:`MetricRow`) of ``records``."""
    dumps = json.dumps
    return [(r.index, int(r.ok), None if r.paths is None else dumps(r.paths), r.error,
             r.wall_time_ns, r.peak_memory_bytes,
             dumps(r.stages) if r.stages else "[]")  # most indices: stages not sampled
            for r in records]


def _guarded(pipeline: Pipeline, write: Callable[[Any], Any]) -> Any:
    """``write(store)`` on ``pipeline``'s store; a store that cannot be written only logs a
    warning (and gives ``None``): the outputs of a run never depend on its metrics."""
    try:
        return write(pipeline.metrics_store())
    except (sqlite3.Error, OSError) as exc:
        log.warning("could not record metrics in %s: %s: %s",
                    getattr(pipeline, "db_path", None), type(exc).__name__, exc)
        return None


def safe_record_rows(pipeline: Pipeline, rows: Sequence[MetricRow]) -> None:
    """Record ready per-index rows (:func:`rows_of`) into ``pipeline``'s store; a store
    that cannot be written only logs a warning."""
    if rows and pipeline.track_metrics:
        _guarded(pipeline, lambda store: store.record_rows(pipeline.invocation_id, rows))


def safe_record_results(pipeline: Pipeline, results: Sequence[IndexResult],
                        names: Mapping[str, str]) -> None:
    """Record a local batch's results into ``pipeline``'s store as one row
    (:meth:`MetricsStore.record_results`); a store that cannot be written only logs a
    warning.

    Parameters
    ----------
    pipeline : Pipeline
        The pipeline that ran them (nothing is recorded without ``track_metrics``).
    results : Sequence[IndexResult]
        The batch's results.
    names : Mapping[str, str]
        :func:`stage_names` of the pipeline.
    """
    if results and pipeline.track_metrics:
        _guarded(pipeline, lambda store: store.record_results(
            pipeline.invocation_id, results, names))


def safe_record_job_blobs(pipeline: Pipeline, blobs: Iterable[bytes | str],
                          names: Mapping[str, str]) -> int:
    """Record a celery job's result blobs into ``pipeline``'s store as they are, one row
    per batch (:meth:`MetricsStore.record_job_blobs`); a store that cannot be written only
    logs a warning. Errors raised by ``blobs`` itself (other than ``OSError``) propagate.

    Returns
    -------
    int
        The number of batches stored (0 when the store could not be written).
    """
    if not pipeline.track_metrics:
        return 0
    stored = _guarded(pipeline, lambda store: store.record_job_blobs(
        pipeline.invocation_id, blobs, names))
    return stored or 0


# --------------------------------------------------------------------------- where


def default_db_dir() -> Path:
    """``$CURATOR_DB_DIR``, else ``$XDG_CACHE_HOME/curator-worker``, else ``~/.cache/...``."""
    explicit = os.environ.get(DB_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "curator-worker"


def pipeline_key(pipeline: Pipeline) -> str:
    """A stable hash of what ``pipeline`` runs (its components and their params).

    The spec hash when the pipeline can be saved as a spec; otherwise a hash of each
    component's class and constructor arguments.
    """
    try:
        return spec_hash(pipeline_to_spec(pipeline))
    except (CuratorError, TypeError, ValueError):
        pass
    parts = []
    for component in (pipeline.source, *pipeline.filters, pipeline.sink):
        cls = type(component)
        params = getattr(component, "init_params", {})
        parts.append([cls.__module__, cls.__qualname__,
                      sorted((str(k), repr(v)) for k, v in dict(params).items())])
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def safe_record(pipeline: Pipeline, records: Sequence[IndexRecord]) -> None:
    """Record ``records`` into ``pipeline``'s store, one row each (``pipeline[i]`` records
    one index at a time); a store that cannot be written only logs a warning."""
    if records and pipeline.track_metrics:
        safe_record_rows(pipeline, rows_of(records))
