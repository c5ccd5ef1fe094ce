"""Atomic file writes: write to a temporary file beside the target, then rename it.

A reader never sees a half-written file. A process killed mid-write leaves a hidden
temporary file ``.<name>.<host>-<pid>-<token>.tmp``; the name says who wrote it, so
:func:`remove_stale_temps` can remove it once its writer is gone (gather does, when a job
finishes). Shared by the sinks, the stateful filters, gather and the local backends.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_path",
    "atomic_write",
    "remove_stale_scratch",
    "remove_stale_temps",
    "scratch_dir",
    "temp_path_for",
]

#: This host's short name, as written into temporary file names.
HOST = socket.gethostname().split(".")[0] or "host"
_TEMP = re.compile(r"^\..+\.(?P<host>[^.]+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_SCRATCH = re.compile(r"^curator-[a-z]+\.(?P<host>[^.]+)\.(?P<pid>\d+)\.")
#: Seconds after which another host's temporary file is taken as abandoned.
FOREIGN_TEMP_AGE = 120.0
#: Seconds a temporary file of a live writer of this host must be untouched, and not open
#: in that writer, to be taken as abandoned (a failed write whose writer lives on).
IDLE_TEMP_AGE = 2.0


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary path in the same directory as ``path``.

    Parameters
    ----------
    path : str or PathLike
        The final path.

    Returns
    -------
    Path
        ``<dir>/.<name>.<host>-<pid>-<token>.tmp``; same directory, so ``os.replace`` is
        atomic.

    Examples
    --------
    >>> temp_path_for("/data/out.json").name.startswith(".out.json.")
    True
    """
    target = Path(path)
    return target.with_name(f".{target.name}.{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holds_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` open (True when that cannot be told)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return True
    target = os.path.realpath(path)
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == target:
                return True
        except OSError:
            continue
    return False


def remove_stale_temps(folder: str | os.PathLike[str], *, own: bool = False) -> int:
    """Remove temporary files in ``folder`` whose writer is gone; return how many.

    A file of this host is stale when its writer's pid no longer runs, or when its writer
    lives on (a pool process whose write failed, e.g. on a full disk, without removing its
    temp) but does not have it open and has not changed it for :data:`IDLE_TEMP_AGE`
    seconds; a file of another host when it has not changed for :data:`FOREIGN_TEMP_AGE`
    seconds. ``own``: also every temporary file of this very process (call it when none
    of its writes is in progress, e.g. after a batch in which a write failed).
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        found = _TEMP.match(entry.name)
        if not found or not entry.is_file(follow_symlinks=False):
            continue
        if found["host"] == HOST:
            pid = int(found["pid"])
            stale = not _alive(pid) or (own and pid == os.getpid())
            if not stale:
                try:
                    idle = now - entry.stat().st_mtime > IDLE_TEMP_AGE
                except OSError:
                    continue
                stale = idle and not _holds_open(pid, entry.path)
        else:
            try:
                stale = now - entry.stat().st_mtime > FOREIGN_TEMP_AGE
            except OSError:
                continue
        if stale:
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    if removed:
        logger.info("removed %d abandoned temporary files in %s", removed, folder)
    return removed


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


@contextmanager
def scratch_dir(kind: str) -> Iterator[str]:
    """A private local folder in the system temp dir, removed (with its files) on exit.

    Named ``curator-<kind>.<host>.<pid>.<random>`` so that :func:`remove_stale_scratch`
    can remove the folder of a process killed inside the block. Used for the local copies
    that object-storage shards and merges go through.
    """
    folder = tempfile.mkdtemp(prefix=f"curator-{kind}.{HOST}.{os.getpid()}.")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_scratch(parent: str | None = None) -> int:
    """Remove :func:`scratch_dir` folders of this host whose process is gone; return how many.

    ``parent``: where to look (default: the system temp dir, as :func:`scratch_dir` uses).
    """
    folder = parent or tempfile.gettempdir()
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        found = _SCRATCH.match(entry.name)
        if not found or found["host"] != HOST or _alive(int(found["pid"])):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    if removed:
        logger.info("removed %d abandoned scratch folders in %s", removed, folder)
    return removed
