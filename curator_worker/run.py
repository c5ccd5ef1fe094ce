"""``run_pipeline`` and the backend registry (compatible with physicsnemo-curator's ``run``).

Every backend receives the same validated :class:`RunConfig` and returns the sink paths of
each index, ordered like ``indices``. Backends differ only in how they dispatch work;
planning (partitions, batches) lives in :mod:`curator_worker.planning`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from curator_worker.pipeline import Pipeline
from curator_worker.planning import check_indices


def resolve_n_jobs(n_jobs: int) -> int:
    """``n_jobs`` as a process count: ``n_jobs <= 0`` means ``cpu_count + 1 + n_jobs`` (≥ 1).

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
    """What a backend is asked to do.

    Parameters
    ----------
    n_jobs : int
        Worker processes (already resolved: ≥ 1).
    indices : list[int]
        The indices to run, validated, in the caller's order.
    progress : bool | str
        ``True`` for a progress bar, ``"log"`` for periodic log lines, ``False`` for none.
    backend_kwargs : dict
        Extra keyword options for the backend.
    """

    n_jobs: int = 1
    indices: list[int] = field(default_factory=list)
    progress: bool | str = False
    backend_kwargs: dict[str, Any] = field(default_factory=dict)


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


def run_pipeline(
    pipeline: Pipeline,
    *,
    n_jobs: int = 1,
    backend: str = "sequential",
    indices: Sequence[int] | None = None,
    use_tui: bool | None = None,
    progress: bool | str | None = None,
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
        ``sequential``, ``thread``, ``process_pool``, ``loky``, ``dask`` or ``celery``
        (see :func:`list_backends`).
    indices : Sequence[int], optional
        Indices to run (default: all), each at most once.
    use_tui, progress : bool | "log", optional
        Show progress (``progress`` is the newer spelling; either is accepted).
    **backend_kwargs
        Passed to the backend (for ``celery``: ``broker_url``, ``queue``, ``batch_size``...).

    Returns
    -------
    list[list[str]]
        ``result[k]`` is the list of paths the sink wrote for ``indices[k]``.

    Raises
    ------
    PipelineError
        If the pipeline has no sink.
    IndexSelectionError
        For out-of-range or duplicate indices.
    JobFailedError
        (``celery``) when some indices failed; it lists them.

    Examples
    --------
    >>> from curator_worker.components import SyntheticArrays, NpzPerIndex
    >>> p = SyntheticArrays(count=3).write(NpzPerIndex(output_dir="/tmp/cw-run-doc"))
    >>> [len(paths) for paths in run_pipeline(p)]
    [1, 1, 1]
    """
    pipeline.require_sink()
    if indices is None:  # every index: valid by construction, unless there are none
        chosen = list(range(len(pipeline)))
        if not chosen:
            check_indices(chosen, 0)  # raises
    else:
        chosen = check_indices(list(indices), len(pipeline))
    jobs = resolve_n_jobs(n_jobs)
    shown: bool | str = progress if progress is not None else bool(use_tui)
    name = backend
    if jobs == 1 and backend != "celery" and not backend_kwargs:
        name = "sequential"
    runner = get_backend(name)
    config = RunConfig(n_jobs=jobs, indices=chosen, progress=shown, backend_kwargs=backend_kwargs)
    return runner.run(pipeline, config)
