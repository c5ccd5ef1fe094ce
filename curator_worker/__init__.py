"""curator-worker: run dataset-curation pipelines on a Celery cluster fed through Redis.

The pipeline contract matches physicsnemo-curator (``Source``, ``Filter``, ``Sink``,
``Pipeline``, ``run_pipeline``, ``RunConfig``, the backend classes), so its components run
here unchanged::

    from curator_worker import run_pipeline
    results = run_pipeline(pipeline, backend="celery", n_jobs=4)
"""

from typing import Any

from curator_worker import earlier_import_paths
from curator_worker.contract.partitions import intersect_partitions
from curator_worker.contract.pipeline import (
    REQUIRED,
    Filter,
    Param,
    Pipeline,
    PipelineStateError,
    Sink,
    Source,
)
from curator_worker.contract.planning import batch_groups
from curator_worker.errors import (
    CuratorError,
    IndexSelectionError,
    JobFailedError,
    JobWaitTimeout,
    PartitionConflictError,
    PipelineError,
    SpecError,
)
from curator_worker.gather import gather_pipeline
from curator_worker.metrics import IndexMetrics, PipelineMetrics, StageMetrics
from curator_worker.run import (
    RunBackend,
    RunConfig,
    get_backend,
    list_backends,
    register_backend,
    run_pipeline,
)
from curator_worker.store import Job, JobStatus, JobStore

earlier_import_paths.install()  # `import curator_worker.worker.tasks` and the like keep working

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The backend classes by name (``from curator_worker import ProcessPoolBackend``),
    imported on first use."""
    from curator_worker import run

    if name in run.BACKEND_CLASSES:
        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REQUIRED",
    "CuratorError",
    "Filter",
    "IndexMetrics",
    "IndexSelectionError",
    "Job",
    "JobFailedError",
    "JobWaitTimeout",
    "JobStatus",
    "JobStore",
    "Param",
    "PartitionConflictError",
    "Pipeline",
    "PipelineError",
    "PipelineMetrics",
    "PipelineStateError",
    "RunBackend",
    "RunConfig",
    "Sink",
    "Source",
    "SpecError",
    "StageMetrics",
    "batch_groups",
    "gather_pipeline",
    "get_backend",
    "intersect_partitions",
    "list_backends",
    "register_backend",
    "run_pipeline",
]
