"""Sources: indexed collections of work that yield ``{"index", "fields"}`` items.

Every item is a dict ``{"index": int, "fields": {name: numpy.ndarray}}``; file sources
add ``"path"``.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from curator_worker.contract.pipeline import Param, Source, normalise_index

logger = logging.getLogger(__name__)

__all__ = ["FileGlob", "SyntheticArrays"]

Item = dict[str, Any]


def _split_names(text: str) -> list[str]:
    """Comma-separated names, stripped, empties dropped."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _parse_index_list(text: str, param: str) -> frozenset[int]:
    """Comma-separated integers such as ``"3,7"`` (``""`` is empty)."""
    out: set[int] = set()
    for part in _split_names(text):
        try:
            out.add(int(part))
        except ValueError:
            raise ValueError(
                f"Bad {param} {text!r}: give comma-separated integers such as '3,7'."
            ) from None
    return frozenset(out)


def _busy_work(milliseconds: float) -> None:
    """Spin the CPU in pure Python for about ``milliseconds`` (holds the GIL, like real work)."""
    deadline = time.perf_counter() + milliseconds / 1000.0
    acc = 0
    while time.perf_counter() < deadline:
        for k in range(1000):
            acc = (acc + k * k) % 1_000_003


class SyntheticArrays(Source[Item]):
    """Deterministic random float64 arrays, for tests, demos and benchmarks.

    Index ``i`` yields ``items_per_index`` items; item ``k`` holds one array per field,
    drawn from ``numpy.random.default_rng([seed, i, k])``, so the data of an index is the
    same whichever process or machine reads it. Field number ``j`` is normal with mean
    ``j`` and standard deviation 1.

    Fault injection (for tests and demos): indices in ``fail_indices`` raise
    ``RuntimeError`` when read. With ``fail_unless_env`` set, they fail only while that
    environment variable is unset or empty, so a user can "fix the cause" (set it) and
    retry. ``work_ms`` and ``sleep_ms`` simulate per-item CPU work and I/O waits.

    Parameters
    ----------
    count : int
        Number of indices.
    seed : int, optional
        Seed shared by all indices (default 0).
    size : int, optional
        Elements per array (default 64).
    fields : str, optional
        Comma-separated field names (default ``"pressure,velocity"``).
    items_per_index : int, optional
        Items yielded per index (default 1).
    fail_indices : str, optional
        Comma-separated indices that raise ``RuntimeError`` when read (default none).
    fail_unless_env : str, optional
        Name of an environment variable that, when set to a non-empty value, disables
        ``fail_indices`` (default ``""``: always fail).
    work_ms : float, optional
        Milliseconds of pure-Python busy work per item (default 0).
    sleep_ms : float, optional
        Milliseconds of ``time.sleep`` per item (default 0).

    Examples
    --------
    >>> src = SyntheticArrays(count=3, size=4)
    >>> len(src)
    3
    >>> item = next(iter(src[1]))
    >>> item["index"], sorted(item["fields"]), item["fields"]["pressure"].shape
    (1, ['pressure', 'velocity'], (4,))
    """

    name = "SyntheticArrays"
    description = "Deterministic random float64 arrays (with optional fault injection)."

    def __init__(
        self,
        count: int,
        seed: int = 0,
        size: int = 64,
        fields: str = "pressure,velocity",
        items_per_index: int = 1,
        fail_indices: str = "",
        fail_unless_env: str = "",
        work_ms: float = 0.0,
        sleep_ms: float = 0.0,
    ) -> None:
        self.count = int(count)
        self.seed = int(seed)
        self.size = int(size)
        self.fields = _split_names(fields)
        self.items_per_index = int(items_per_index)
        self.fail_indices = _parse_index_list(fail_indices, "fail_indices")
        self.fail_unless_env = str(fail_unless_env or "")
        self.work_ms = float(work_ms)
        self.sleep_ms = float(sleep_ms)
        for label, value in (
            ("count", self.count),
            ("size", self.size),
            ("items_per_index", self.items_per_index),
        ):
            if value < 0:
                raise ValueError(f"SyntheticArrays {label} must be >= 0, got {value}.")
        if self.seed < 0:
            raise ValueError(f"SyntheticArrays seed must be >= 0, got {self.seed}.")
        if not self.fields:
            raise ValueError("SyntheticArrays needs at least one field name in 'fields'.")
        if self.work_ms < 0 or self.sleep_ms < 0:
            raise ValueError("SyntheticArrays work_ms and sleep_ms must be >= 0.")

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`SyntheticArrays`.

        Returns
        -------
        list[Param]
            One :class:`Param` per ``__init__`` keyword argument.

        Examples
        --------
        >>> [p.name for p in SyntheticArrays.params()][:2]
        ['count', 'seed']
        """
        return [
            Param("count", "Number of indices", type=int),
            Param("seed", "Random seed shared by all indices", type=int, default=0),
            Param("size", "Elements per array", type=int, default=64),
            Param("fields", "Comma-separated field names", type=str,
                  default="pressure,velocity"),
            Param("items_per_index", "Items yielded per index", type=int, default=1),
            Param("fail_indices", "Fault injection: comma-separated indices that raise",
                  type=str, default=""),
            Param("fail_unless_env", "Fault injection: env var that, when non-empty, "
                  "stops fail_indices from failing", type=str, default=""),
            Param("work_ms", "Pure-Python busy work per item, in milliseconds",
                  type=float, default=0.0),
            Param("sleep_ms", "Sleep per item, in milliseconds", type=float, default=0.0),
        ]

    def __len__(self) -> int:
        """Number of indices (``count``)."""
        return self.count

    def should_fail(self, index: int) -> bool:
        """Whether reading ``index`` raises the injected failure right now.

        Parameters
        ----------
        index : int
            A valid index.

        Returns
        -------
        bool
            True if ``index`` is in ``fail_indices`` and ``fail_unless_env`` (when given)
            is unset or empty.

        Examples
        --------
        >>> SyntheticArrays(count=4, fail_indices="2").should_fail(2)
        True
        """
        if index not in self.fail_indices:
            return False
        if self.fail_unless_env and os.environ.get(self.fail_unless_env):
            return False
        return True

    def __getitem__(self, index: int) -> Iterator[Item]:
        """The items of ``index``.

        Parameters
        ----------
        index : int
            In ``[-count, count)``.

        Returns
        -------
        Iterator[dict]
            ``items_per_index`` items ``{"index": i, "fields": {name: ndarray}}``.

        Raises
        ------
        IndexError
            If ``index`` is out of range (raised at once, not on iteration).
        RuntimeError
            When the items of an index in ``fail_indices`` are read.

        Examples
        --------
        >>> len(list(SyntheticArrays(count=2, items_per_index=3)[0]))
        3
        """
        i = normalise_index(index, self.count)
        return self._generate(i)

    def _generate(self, i: int) -> Iterator[Item]:
        if self.should_fail(i):
            raise RuntimeError(f"synthetic failure at index {i}")
        for k in range(self.items_per_index):
            rng = np.random.default_rng([self.seed, i, k])
            arrays = {
                field: rng.normal(loc=float(j), scale=1.0, size=self.size)
                for j, field in enumerate(self.fields)
            }
            if self.work_ms > 0:
                _busy_work(self.work_ms)
            if self.sleep_ms > 0:
                time.sleep(self.sleep_ms / 1000.0)
            yield {"index": i, "fields": arrays}


def _read_file_fields(path: str) -> dict[str, np.ndarray]:
    """The arrays of one file: every array of an ``.npz``, ``data`` of an ``.npy``, else bytes."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    if suffix == ".npy":
        return {"data": np.load(path, allow_pickle=False)}
    with open(path, "rb") as fh:
        content = fh.read()
    return {"bytes": np.frombuffer(content, dtype=np.uint8)}


class FileGlob(Source[Item]):
    """One index per file matching a glob, in sorted path order.

    ``.npz`` files give one field per stored array, ``.npy`` files a single field
    ``data``, and any other file a ``uint8`` field ``bytes`` with its raw content. Items
    also carry ``"path"``. The file list is resolved once, when the source is built.

    Parameters
    ----------
    pattern : str
        Glob relative to ``root``; ``**`` matches any number of directories.
    root : str, optional
        Directory the pattern is relative to (default ``"."``).

    Raises
    ------
    ValueError
        If no file matches.

    Examples
    --------
    >>> import tempfile, numpy as np, os
    >>> d = tempfile.mkdtemp()
    >>> np.save(os.path.join(d, "a.npy"), np.arange(3))
    >>> src = FileGlob(pattern="*.npy", root=d)
    >>> len(src), next(iter(src[0]))["fields"]["data"].tolist()
    (1, [0, 1, 2])
    """

    name = "FileGlob"
    description = "One index per file matching a glob (.npz, .npy or raw bytes)."

    def __init__(self, pattern: str, root: str = ".") -> None:
        self.pattern = str(pattern)
        self.root = str(root)
        matches = glob.glob(self.pattern, root_dir=self.root, recursive=True)
        files = sorted(
            {
                os.path.normpath(os.path.join(self.root, rel))
                for rel in matches
                if os.path.isfile(os.path.join(self.root, rel))
            }
        )
        if not files:
            raise ValueError(
                f"FileGlob: no files match {self.pattern!r} under root "
                f"{os.path.abspath(self.root)!r}. Check the pattern and root "
                "(use '**/' to match subdirectories)."
            )
        self.files: tuple[str, ...] = tuple(files)
        logger.debug("FileGlob %r under %r matched %d files", self.pattern, self.root, len(files))

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`FileGlob`.

        Returns
        -------
        list[Param]
            One :class:`Param` per ``__init__`` keyword argument.

        Examples
        --------
        >>> [p.name for p in FileGlob.params()]
        ['pattern', 'root']
        """
        return [
            Param("pattern", "Glob of the input files, relative to root ('**' allowed)",
                  type=str),
            Param("root", "Directory the pattern is relative to", type=str, default="."),
        ]

    def __len__(self) -> int:
        """Number of matching files."""
        return len(self.files)

    def __getitem__(self, index: int) -> Iterator[Item]:
        """The single item of file number ``index``.

        Parameters
        ----------
        index : int
            In ``[-len, len)``.

        Returns
        -------
        Iterator[dict]
            One item ``{"index": i, "path": str, "fields": {name: ndarray}}``.

        Raises
        ------
        IndexError
            If ``index`` is out of range (raised at once).

        Examples
        --------
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> _ = open(os.path.join(d, "x.txt"), "wb").write(b"hi")
        >>> next(iter(FileGlob(pattern="*.txt", root=d)[0]))["fields"]["bytes"].tolist()
        [104, 105]
        """
        i = normalise_index(index, len(self.files))
        return self._read(i)

    def _read(self, i: int) -> Iterator[Item]:
        path = self.files[i]
        yield {"index": i, "path": path, "fields": _read_file_fields(path)}
