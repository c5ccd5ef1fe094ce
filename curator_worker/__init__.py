"""curator-worker: run dataset-curation pipelines on a Celery cluster fed through Redis.

The pipeline contract matches physicsnemo-curator (``Source``, ``Filter``, ``Sink``,
``Pipeline``, ``run_pipeline``, ``RunConfig``, the backend classes), so its components run
here unchanged::

    from curator_worker import run_pipeline
    results = run_pipeline(pipeline, backend="celery", n_jobs=4)
"""

import importlib
from typing import Any

from curator_worker import earlier_import_paths

earlier_import_paths.install()  # `import curator_worker.worker.tasks` and the like keep working

__version__ = "0.1.0"

#: Public name -> the module that defines it. Imported on first use (PEP 562), so that
#: ``import curator_worker.embedded`` or a CLI's ``--help`` does not load Celery, Redis and
#: the whole contract: ``curator-submit`` starts its embedded cluster before those imports.
_EXPORTS: dict[str, str] = {
    "intersect_partitions": "curator_worker.contract.partitions",
    **dict.fromkeys(("REQUIRED", "Filter", "Param", "Pipeline", "PipelineStateError", "Sink",
                     "Source"), "curator_worker.contract.pipeline"),
    "batch_groups": "curator_worker.contract.planning",
    **dict.fromkeys(("CuratorError", "IndexSelectionError", "JobFailedError", "JobWaitTimeout",
                     "PartitionConflictError", "PipelineError", "SpecError"),
                    "curator_worker.errors"),
    "gather_pipeline": "curator_worker.gather",
    **dict.fromkeys(("IndexMetrics", "PipelineMetrics", "StageMetrics"),
                    "curator_worker.metrics"),
    **dict.fromkeys(("RunBackend", "RunConfig", "get_backend", "list_backends",
                     "register_backend", "run_pipeline"), "curator_worker.run"),
    **dict.fromkeys(("Job", "JobStatus", "JobStore"), "curator_worker.store"),
}


def __getattr__(name: str) -> Any:
    """The public names of :data:`__all__` and the backend classes by name (``from
    curator_worker import ProcessPoolBackend``), imported on first use."""
    home = _EXPORTS.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name.endswith("Backend"):  # not for others: `from curator_worker import run` asks
        run = importlib.import_module("curator_worker.run")
        if name in run.BACKEND_CLASSES:
            return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
