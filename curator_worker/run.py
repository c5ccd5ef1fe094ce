"""``run_pipeline`` and the backend registry (compatible with physicsnemo-curator's ``run``).

Every backend receives the same validated :class:`RunConfig` and returns the sink paths of
each index, ordered like ``indices``. Backends differ only in how they dispatch work;
planning (partitions, batches) lives in :mod:`curator_worker.contract.planning`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from curator_worker.contract.indices import check_indices
from curator_worker.contract.partitions import intersect_partitions
from curator_worker.contract.pipeline import Pipeline
from curator_worker.contract.planning import batch_groups

log = logging.getLogger(__name__)

# Also importable by name (lazily, see __getattr__): the backend classes of
# BACKEND_CLASSES and gather_pipeline.
__all__ = [
    "RunBackend",
    "RunConfig",
    "batch_groups",
    "get_backend",
    "intersect_partitions",
    "list_backends",
    "register_backend",
    "run_pipeline",
]


def resolve_n_jobs(n_jobs: int) -> int:
    """``n_jobs`` as a process count: ``n_jobs <= 0`` means ``cpu_count + 1 + n_jobs`` (≥ 1).

    ``-1`` is every CPU, ``-2`` all but one.

    Examples
    --------
    >>> resolve_n_jobs(3)
    3
    >>> resolve_n_jobs(-10_000)
    1
    """
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
        raise TypeError(f"n_jobs must be an integer, got {n_jobs!r}.")
    if n_jobs > 0:
        return n_jobs
    return max(1, (os.cpu_count() or 1) + 1 + n_jobs)


@dataclass
class RunConfig:
    """What a backend is asked to do (physicsnemo-curator's ``RunConfig``).

    Parameters
    ----------
    n_jobs : int
        Workers; ``<= 0`` means ``cpu_count + 1 + n_jobs`` (see :attr:`resolved_n_jobs`).
    progress : bool | str
        ``True`` for a progress bar, ``"log"`` for periodic log lines, ``False`` for none.
    indices : list[int] | None
        The indices to run, in the caller's order; ``None`` means all. :func:`run_pipeline`
        always gives backends the validated list.
    backend_options : dict
        Extra keyword options for the backend.
    use_tui : bool, optional
        The older spelling of ``progress``; when given, it sets ``progress``.

    Examples
    --------
    >>> RunConfig(n_jobs=-10_000).resolved_n_jobs
    1
    """

    n_jobs: int = 1
    progress: bool | str = True
    indices: list[int] | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)
    use_tui: bool | None = None

    def __post_init__(self) -> None:
        if self.use_tui is None:
            self.use_tui = bool(self.progress)
        else:
            self.progress = bool(self.use_tui)

    @property
    def resolved_n_jobs(self) -> int:
        """The worker count: ``n_jobs`` if positive, else ``cpu_count + 1 + n_jobs`` (≥ 1)."""
        return resolve_n_jobs(self.n_jobs)

    @property
    def backend_kwargs(self) -> dict[str, Any]:
        """Alias of :attr:`backend_options`."""
        return self.backend_options


class RunBackend(ABC):
    """A way to run a pipeline. Subclass, set the class attributes, implement :meth:`run`.

    Attributes
    ----------
    name : str
        Registry name (``backend=`` of :func:`run_pipeline`).
    description : str
        One line for :func:`list_backends`.
    requires : tuple[str, ...]
        Importable packages the backend needs.
    extra : str
        The ``pip install 'curator-worker[extra]'`` that provides them.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    @classmethod
    def is_available(cls) -> bool:
        """True when every package in :attr:`requires` can be imported."""
        return all(importlib.util.find_spec(req) is not None for req in cls.requires)

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`ImportError` naming the missing package and how to install it."""
        for req in cls.requires:
            if importlib.util.find_spec(req) is None:
                how = f"pip install {req}"
                if cls.extra:
                    how = f"pip install 'curator-worker[{cls.extra}]'"
                raise ImportError(
                    f"Backend {cls.name!r} needs the package {req!r}, which is not installed. "
                    f"Install it with: {how}"
                )

    @abstractmethod
    def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
        """Run ``config.indices``; return each index's sink paths in that order."""

    def completed_before(self, pipeline: Pipeline, config: RunConfig) -> dict[int, list[str]]:
        """Indices of ``config.indices`` that earlier runs completed, as this backend knows
        them beyond the local metrics store (``resume=True``); none by default."""
        return {}


_REGISTRY: dict[str, type[RunBackend]] = {}
_BUILTINS = (
    "curator_worker.backends.sequential",
    "curator_worker.backends.thread",
    "curator_worker.backends.process_pool",
    "curator_worker.backends.loky",
    "curator_worker.backends.dask",
    "curator_worker.backends.celery",
)


def _load_builtins() -> None:
    for module in _BUILTINS:
        importlib.import_module(module)


def register_backend(backend: type[RunBackend]) -> type[RunBackend]:
    """Register a backend class under its ``name``; usable as a class decorator.

    Raises
    ------
    ValueError
        If the name is empty or already registered.
    """
    name = getattr(backend, "name", "")
    if not name:
        raise ValueError(f"Backend {backend!r} has no name. Set the class attribute `name`.")
    if name in _REGISTRY and _REGISTRY[name] is not backend:
        raise ValueError(f"A backend named {name!r} is already registered.")
    _REGISTRY[name] = backend
    return backend


def get_backend(name: str) -> RunBackend:
    """An instance of the backend ``name``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    ImportError
        If the backend's optional dependency is missing.
    """
    _load_builtins()
    cls = _REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"Unknown backend {name!r}. Available backends: {known}.")
    cls.check_available()
    return cls()


def list_backends() -> dict[str, dict[str, Any]]:
    """Every registered backend: ``{name: {description, available, requires}}``."""
    _load_builtins()
    return {
        name: {
            "description": cls.description,
            "available": cls.is_available(),
            "requires": list(cls.requires),
        }
        for name, cls in sorted(_REGISTRY.items())
    }


#: Backend classes importable from this module by name, and the module defining each.
BACKEND_CLASSES = {
    "SequentialBackend": "curator_worker.backends.sequential",
    "ThreadBackend": "curator_worker.backends.thread",
    "ThreadPoolBackend": "curator_worker.backends.thread",
    "ProcessPoolBackend": "curator_worker.backends.process_pool",
    "LokyBackend": "curator_worker.backends.loky",
    "DaskBackend": "curator_worker.backends.dask",
    "CeleryBackend": "curator_worker.backends.celery",
}


def __getattr__(name: str) -> Any:
    """Backend classes by name (``from curator_worker.run import ProcessPoolBackend``)."""
    if name == "gather_pipeline":
        from curator_worker.gather import gather_pipeline

        return gather_pipeline
    module = BACKEND_CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def _pick_auto_backend() -> str:
    """The backend ``backend="auto"`` runs: ``process_pool`` (timeouts, crash isolation)."""
    return "process_pool"


def run_pipeline(
    pipeline: Pipeline,
    *,
    n_jobs: int = 1,
    backend: str = "sequential",
    indices: Iterable[int] | None = None,
    use_tui: bool | None = None,
    progress: bool | str | None = None,
    db_dir: str | os.PathLike[str] | None = None,
    resume: bool | None = None,
    **backend_kwargs: Any,
) -> list[list[str]]:
    """Run ``pipeline`` over ``indices`` and return each index's sink paths, in order.

    Parameters
    ----------
    pipeline : Pipeline
        A pipeline with a sink.
    n_jobs : int
        Worker processes; ``1`` runs sequentially on local backends (unless backend
        options are given, which only the named backend can honour: it then runs with one
        worker); ``<= 0`` means ``cpu_count + 1 + n_jobs``. For ``celery`` it sizes the
        embedded cluster when no broker is configured (a configured cluster has its own
        workers).
    backend : str
        ``sequential``, ``thread`` (``thread_pool``), ``process_pool``, ``loky``, ``dask``,
        ``celery``, or ``auto`` (see :func:`list_backends`).
    indices : Iterable[int], optional
        Indices to run (default: all), each at most once; an empty list runs nothing.
    use_tui, progress : bool | "log", optional
        Show progress (``progress`` is the newer spelling; either is accepted).
    db_dir : str | os.PathLike, optional
        Folder of the metrics store; sets ``pipeline.db_dir``.
    resume : bool, optional
        Skip the indices a previous run of the same pipeline (same components and params,
        any backend) completed; their recorded paths are returned. Default:
        ``pipeline.resume``. Needs ``track_metrics``.
    **backend_kwargs
        Passed to the backend (for ``celery``: ``broker_url``, ``queue``, ``batch_size``...).

    Returns
    -------
    list[list[str]]
        ``result[k]`` is the list of paths the sink wrote for ``indices[k]``.

    Raises
    ------
    PipelineError
        If the pipeline has no sink (a ``RuntimeError`` too), or ``resume`` without metrics.
    IndexSelectionError
        For out-of-range or duplicate indices.
    JobFailedError
        When some indices failed; it lists them.

    Examples
    --------
    >>> from curator_worker.components import SyntheticArrays, NpzPerIndex
    >>> p = SyntheticArrays(count=3).write(NpzPerIndex(output_dir="/tmp/cw-run-doc"))
    >>> [len(paths) for paths in run_pipeline(p, db_dir="/tmp/cw-run-doc/.db")]
    [1, 1, 1]
    >>> len(p.metrics.indices)
    3
    """
    if backend == "auto":
        backend = _pick_auto_backend()
    _load_builtins()
    if backend not in _REGISTRY:
        get_backend(backend)  # raises, naming the known backends
    pipeline.require_sink()
    if indices is not None and not hasattr(indices, "__len__"):
        indices = list(indices)  # a generator or other iterable
    if indices is not None and len(indices) == 0:
        return []
    if indices is None:  # every index: valid by construction, unless there are none
        chosen = list(range(len(pipeline)))
        if not chosen:
            check_indices(chosen, 0)  # raises
    else:
        chosen = check_indices(list(indices), len(pipeline))
    jobs = resolve_n_jobs(n_jobs)
    shown: bool | str = progress if progress is not None else bool(use_tui)
    if db_dir is not None:
        pipeline.db_dir = db_dir
    name = backend
    if jobs == 1 and backend != "celery" and not backend_kwargs:
        name = "sequential"
    runner = get_backend(name)
    if not (pipeline.resume if resume is None else resume):
        config = RunConfig(n_jobs=jobs, progress=shown, indices=chosen,
                           backend_options=backend_kwargs)
        return runner.run(pipeline, config)
    return _resume(pipeline, runner, chosen, RunConfig(
        n_jobs=jobs, progress=shown, indices=chosen, backend_options=backend_kwargs))


def _resume(pipeline: Pipeline, runner: RunBackend, chosen: list[int],
            config: RunConfig) -> list[list[str]]:
    """Run only the indices of ``chosen`` that no earlier run completed; merge the paths."""
    from curator_worker.contract.pipeline import PipelineStateError, is_stateful

    if not pipeline.track_metrics:
        raise PipelineStateError(
            "resume=True reads completed indices from the metrics store, but this pipeline "
            "has track_metrics=False. Set pipeline.track_metrics = True (also for the run "
            "to resume from)."
        )
    store = pipeline.metrics_store()
    done = {**runner.completed_before(pipeline, config), **store.completed()}
    skipped = [i for i in chosen if i in done]
    todo = [i for i in chosen if i not in done]
    store.adopt(pipeline.invocation_id, skipped)
    log.info("resume: %d of %d indices already completed, running %d", len(skipped),
             len(chosen), len(todo))
    if skipped and any(is_stateful(f) for f in pipeline.filters):
        log.warning("resume: stateful filters' outputs (flush/merge) cover only the %d "
                    "indices run now, not the %d skipped", len(todo), len(skipped))
    if not todo:
        return [list(done[i]) for i in chosen]
    config.indices = todo
    ran = runner.run(pipeline, config)
    by_index = dict(zip(todo, ran, strict=True))
    merged = [list(done[i]) if i in done else by_index[i] for i in chosen]
    errors = getattr(ran, "errors", None)
    if errors is not None:  # keep a local backend's RunResult (failures as data)
        from curator_worker.backends.run_result import RunResult

        return RunResult(merged, run_id=getattr(ran, "run_id", ""), errors=errors)
    return merged
