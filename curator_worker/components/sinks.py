"""Sinks: write the items of one index and return the paths written.

Both sinks write atomically (temporary file + ``os.replace``) so a crashed or retried
worker never leaves a half-written output, and rewriting an index is idempotent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from curator_worker.atomic import atomic_path
from curator_worker.contract.pipeline import Param, Sink

logger = logging.getLogger(__name__)

__all__ = ["NpzChunked", "NpzPerIndex"]

Item = dict[str, Any]


def _item_arrays(items: Iterator[Item]) -> list[dict[str, np.ndarray]]:
    """The field arrays of each item, in order."""
    out: list[dict[str, np.ndarray]] = []
    for item in items:
        fields = item.get("fields", {}) if isinstance(item, dict) else {}
        out.append({str(name): np.asarray(value) for name, value in dict(fields).items()})
    return out


def _keyed(per_item: list[dict[str, np.ndarray]], prefix: str = "") -> dict[str, np.ndarray]:
    """Archive keys: ``prefix + field`` for one item, ``prefix + f"{k}__{field}"`` for several."""
    arrays: dict[str, np.ndarray] = {}
    several = len(per_item) > 1
    for k, fields in enumerate(per_item):
        for field, value in fields.items():
            key = f"{prefix}{k}__{field}" if several else f"{prefix}{field}"
            arrays[key] = value
    return arrays


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` at ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # A file object, not a name: np.savez would append ".npz" to the temp name.
        np.savez(fh, **arrays)


class NpzPerIndex(Sink[Item]):
    """One ``.npz`` file per index: ``{output_dir}/{prefix}_{index:08d}.npz``.

    The file holds every field of the index's items: keys are the field names when the
    index has one item, ``f"{k}__{field}"`` for item ``k`` when it has several. An index
    with no items still gets an (empty) file, so there is one output per index.

    Parameters
    ----------
    output_dir : str
        Directory of the output files (created if needed).
    prefix : str, optional
        File name prefix (default ``"item"``).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> sink = NpzPerIndex(output_dir=tempfile.mkdtemp())
    >>> [path] = sink(iter([{"index": 3, "fields": {"x": np.arange(2)}}]), 3)
    >>> path.endswith("item_00000003.npz"), np.load(path)["x"].tolist()
    (True, [0, 1])
    """

    name = "NpzPerIndex"
    description = "One .npz file per index, written atomically."

    def __init__(self, output_dir: str, prefix: str = "item") -> None:
        self.output_dir = str(output_dir)
        self.prefix = str(prefix)

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`NpzPerIndex`.

        Returns
        -------
        list[Param]
            One :class:`Param` per ``__init__`` keyword argument.

        Examples
        --------
        >>> [p.name for p in NpzPerIndex.params()]
        ['output_dir', 'prefix']
        """
        return [
            Param("output_dir", "Directory of the .npz files", type=str),
            Param("prefix", "File name prefix", type=str, default="item"),
        ]

    def path_for(self, index: int) -> str:
        """The output path of ``index``.

        Parameters
        ----------
        index : int
            A pipeline index.

        Returns
        -------
        str
            ``{output_dir}/{prefix}_{index:08d}.npz``.

        Examples
        --------
        >>> NpzPerIndex(output_dir="out").path_for(7)
        'out/item_00000007.npz'
        """
        return os.path.join(self.output_dir, f"{self.prefix}_{int(index):08d}.npz")

    def __call__(self, items: Iterator[Item], index: int) -> list[str]:
        """Write the items of ``index`` to its file.

        Parameters
        ----------
        items : Iterator[dict]
            Items ``{"index", "fields": {name: ndarray}}``.
        index : int
            The index being written.

        Returns
        -------
        list[str]
            ``[path]``.

        Examples
        --------
        >>> import tempfile, numpy as np
        >>> sink = NpzPerIndex(output_dir=tempfile.mkdtemp())
        >>> [path] = sink(iter([]), 0)
        >>> np.load(path).files
        []
        """
        path = self.path_for(index)
        _write_npz(path, _keyed(_item_arrays(items)))
        logger.debug("NpzPerIndex wrote index %d to %s", index, path)
        return [path]


class NpzChunked(Sink[Item]):
    """Indices grouped into chunk files of ``chunk_size`` consecutive indices.

    Index ``i`` goes into ``{output_dir}/{prefix}_{i // chunk_size:06d}.npz`` under keys
    ``f"i{i:08d}__{field}"`` (``f"i{i:08d}__{k}__{field}"`` for item ``k`` when the index
    has several items). Writing an index reads the chunk, replaces that index's arrays
    and writes the chunk back atomically, so rewriting an index is idempotent. The
    indices of one chunk must be written by one worker, in order: see
    :meth:`partition_indices`.

    Parameters
    ----------
    output_dir : str
        Directory of the chunk files (created if needed).
    chunk_size : int, optional
        Indices per chunk (default 16).
    prefix : str, optional
        File name prefix (default ``"chunk"``).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> sink = NpzChunked(output_dir=tempfile.mkdtemp(), chunk_size=4)
    >>> [path] = sink(iter([{"index": 5, "fields": {"x": np.zeros(2)}}]), 5)
    >>> path.endswith("chunk_000001.npz"), np.load(path).files
    (True, ['i00000005__x'])
    """

    name = "NpzChunked"
    description = "Chunk .npz files of chunk_size consecutive indices, rewritten atomically."

    def __init__(self, output_dir: str, chunk_size: int = 16, prefix: str = "chunk") -> None:
        self.output_dir = str(output_dir)
        self.chunk_size = int(chunk_size)
        self.prefix = str(prefix)
        if self.chunk_size < 1:
            raise ValueError(f"NpzChunked chunk_size must be >= 1, got {self.chunk_size}.")

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`NpzChunked`.

        Returns
        -------
        list[Param]
            One :class:`Param` per ``__init__`` keyword argument.

        Examples
        --------
        >>> [p.name for p in NpzChunked.params()]
        ['output_dir', 'chunk_size', 'prefix']
        """
        return [
            Param("output_dir", "Directory of the chunk files", type=str),
            Param("chunk_size", "Indices per chunk file", type=int, default=16),
            Param("prefix", "File name prefix", type=str, default="chunk"),
        ]

    def chunk_of(self, index: int) -> int:
        """The chunk number of ``index`` (``index // chunk_size``).

        Examples
        --------
        >>> NpzChunked(output_dir="out", chunk_size=4).chunk_of(9)
        2
        """
        return int(index) // self.chunk_size

    def path_for(self, index: int) -> str:
        """The chunk file that holds ``index``.

        Parameters
        ----------
        index : int
            A pipeline index.

        Returns
        -------
        str
            ``{output_dir}/{prefix}_{index // chunk_size:06d}.npz``.

        Examples
        --------
        >>> NpzChunked(output_dir="out", chunk_size=4).path_for(9)
        'out/chunk_000002.npz'
        """
        return os.path.join(self.output_dir, f"{self.prefix}_{self.chunk_of(index):06d}.npz")

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]]:
        """Group ``indices`` by chunk, so each chunk file has a single writer.

        Parameters
        ----------
        indices : Sequence[int]
            The indices of the run, in any order.

        Returns
        -------
        list[list[int]]
            One ascending group per chunk, ordered by chunk number.

        Examples
        --------
        >>> NpzChunked(output_dir="out", chunk_size=4).partition_indices([9, 1, 0, 8, 5])
        [[0, 1], [5], [8, 9]]
        """
        groups: dict[int, list[int]] = {}
        for i in indices:
            groups.setdefault(self.chunk_of(i), []).append(int(i))
        return [sorted(groups[chunk]) for chunk in sorted(groups)]

    def __call__(self, items: Iterator[Item], index: int) -> list[str]:
        """Add or replace the arrays of ``index`` in its chunk file.

        Parameters
        ----------
        items : Iterator[dict]
            Items ``{"index", "fields": {name: ndarray}}``.
        index : int
            The index being written.

        Returns
        -------
        list[str]
            ``[chunk path]``.

        Examples
        --------
        >>> import tempfile, numpy as np
        >>> sink = NpzChunked(output_dir=tempfile.mkdtemp())
        >>> item = {"index": 0, "fields": {"x": np.ones(1)}}
        >>> sink(iter([item]), 0) == sink(iter([item]), 0)
        True
        """
        index = int(index)
        key_prefix = f"i{index:08d}__"
        new_arrays = _keyed(_item_arrays(items), prefix=key_prefix)
        path = self.path_for(index)
        arrays: dict[str, np.ndarray] = {}
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as archive:
                arrays = {
                    key: archive[key] for key in archive.files if not key.startswith(key_prefix)
                }
        arrays.update(new_arrays)
        _write_npz(path, dict(sorted(arrays.items())))
        logger.debug("NpzChunked wrote index %d to %s", index, path)
        return [path]
