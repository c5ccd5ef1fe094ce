"""Run backends, one module each; importing a module registers its backend.

The classes are importable by name from here, from :mod:`curator_worker.run` and from
:mod:`curator_worker` (``SequentialBackend``, ``ThreadBackend`` / ``ThreadPoolBackend``,
``ProcessPoolBackend``, ``LokyBackend``, ``DaskBackend``, ``CeleryBackend``).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """A backend class by name, its module imported on first use."""
    from curator_worker import run

    if name in run.BACKEND_CLASSES:
        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
