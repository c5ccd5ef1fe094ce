"""Atomic file writes: write to a temporary file beside the target, then rename it.

A reader never sees a half-written file, and a crash leaves at most a hidden temporary
file (``.<name>.<uuid>.tmp``) that the next successful write does not depend on. Shared by
the sinks and by stateful filters.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["atomic_path", "atomic_write", "temp_path_for"]


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary path in the same directory as ``path``.

    Parameters
    ----------
    path : str or PathLike
        The final path.

    Returns
    -------
    Path
        ``<dir>/.<name>.<uuid>.tmp``; same directory, so ``os.replace`` is atomic.

    Examples
    --------
    >>> temp_path_for("/data/out.json").name.startswith(".out.json.")
    True
    """
    target = Path(path)
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    Parent directories of ``path`` are created. On an exception the temporary file is
    removed and the exception propagates; ``path`` is left untouched.

    Parameters
    ----------
    path : str or PathLike
        The final path.

    Returns
    -------
    Iterator[Path]
        A context manager yielding the temporary path to write.

    Examples
    --------
    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "sub", "a.txt")
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> open(target).read()
    'hello'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:  # pragma: no cover - best effort cleanup
            logger.warning("Could not remove temporary file %s", tmp, exc_info=True)
        raise


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> str:
    """Call ``writer(tmp_path)`` and atomically move the result onto ``path``.

    Parameters
    ----------
    path : str or PathLike
        The final path.
    writer : Callable[[Path], object]
        Writes the complete file at the temporary path it is given.

    Returns
    -------
    str
        ``path`` as a string.

    Examples
    --------
    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "b.txt")
    >>> atomic_write(target, lambda p: p.write_text("x")) == target
    True
    """
    with atomic_path(path) as tmp:
        writer(tmp)
    return os.fspath(path)
