"""Parquet: the :class:`ParquetFiles` source and the :class:`ParquetSink` and
:class:`ParquetChunked` sinks (pyarrow), on local paths and fsspec URLs.

Rows are records: items ``{"index", "path", "row", "fields": {column: value}}``. Sinks build
one table from the records of an index (``pyarrow.Table.from_pylist``: columns in order of
first appearance, types inferred) and write it whole.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as exc:  # an optional dependency: one clear line naming the fix
    raise ImportError(
        "The Parquet components need pyarrow, which is not installed here: "
        "pip install 'curator-worker[parquet]' (on every worker)."
    ) from exc

from curator_worker.components.records import (
    STORAGE_OPTIONS,
    ChunkedRecords,
    records_of,
)
from curator_worker.components.storage import (
    PathList,
    check_location,
    check_storage_options,
    exists,
    join,
    list_files,
    open_input,
    read_bytes,
    resolve_storage_options,
    write_bytes,
)
from curator_worker.contract.pipeline import Param, Sink, Source, normalise_index

logger = logging.getLogger(__name__)

__all__ = ["ParquetChunked", "ParquetFiles", "ParquetSink"]

Item = dict[str, Any]

#: Compression codecs a Parquet sink accepts.
COMPRESSIONS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")
#: The ``compression`` parameter of the Parquet sinks.
COMPRESSION = Param("compression", "Parquet compression codec", type=str, default="snappy",
                    choices=COMPRESSIONS)


def _split_names(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def table_bytes(table: pa.Table, compression: str) -> bytes:
    """``table`` as the bytes of one Parquet file.

    Examples
    --------
    >>> import pyarrow as pa
    >>> table_bytes(pa.table({"x": [1]}), "snappy")[:4]
    b'PAR1'
    """
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=compression)
    return buffer.getvalue()


class ParquetFiles(Source[Item]):
    """One index per Parquet file, or per row group; one item per row.

    Index ``i`` yields ``{"index": i, "path": file, "row": k, "fields": {column: value}}``
    for each row (``row`` counts from the start of the file). With ``row_groups`` each
    row group of each file is an index of its own (items also carry ``"row_group"``), and
    :meth:`partition_indices` keeps the row groups of a file in one batch, in order. A
    missing or corrupt file makes its index fail (an index failure, recorded like any
    other), never the run; with ``row_groups`` such a file is one index.

    The file list is resolved when the source is built (each glob's matches in sorted
    order); with ``row_groups`` every file's footer is read then too.

    Parameters
    ----------
    paths : str or list of str
        A path, ``file://`` or fsspec URL, or a list of them; globs allowed.
    columns : str, optional
        Comma-separated columns to read (default ``""``: all).
    row_groups : bool, optional
        One index per row group instead of per file (default False).
    storage_options : dict, optional
        fsspec options for URLs; credentials only as ``"${ENV_VARIABLE}"``, or from the
        environment or a profile.

    Raises
    ------
    ValueError
        If a glob matches nothing or listing fails, or ``storage_options`` holds a
        credential in clear.

    Examples
    --------
    >>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
    >>> d = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"x": [1, 2, 3]}), os.path.join(d, "a.parquet"), row_group_size=2)
    >>> src = ParquetFiles(paths=os.path.join(d, "*.parquet"), row_groups=True)
    >>> len(src), [item["fields"]["x"] for item in src[1]]
    (2, [3])
    """

    name = "ParquetFiles"
    description = "One index per Parquet file or row group (paths, globs or fsspec URLs)."

    def __init__(self, paths: str | list[str], columns: str = "", row_groups: bool = False,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.paths = PathList(paths)
        self.columns = _split_names(columns)
        self.row_groups = bool(row_groups)
        self.storage_options = check_storage_options(storage_options, self.name)
        options = resolve_storage_options(self.storage_options, self.name)
        self.files: tuple[str, ...] = tuple(list_files(self.paths, options, self.name))
        # (file, row group or None for the whole file), one per index
        units: list[tuple[str, int | None]] = []
        for path in self.files:
            if not self.row_groups:
                units.append((path, None))
                continue
            try:
                with open_input(path, options, compression=None) as fh:
                    count = pq.ParquetFile(fh).metadata.num_row_groups
            except Exception as exc:  # noqa: BLE001 - the index fails when it is read
                logger.warning("ParquetFiles: cannot read the footer of %s (%s: %s); it is "
                               "one index, which fails when read", path, type(exc).__name__,
                               exc)
                units.append((path, None))
                continue
            units.extend((path, g) for g in range(count))
        self.units: tuple[tuple[str, int | None], ...] = tuple(units)

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`ParquetFiles`.

        Examples
        --------
        >>> [p.name for p in ParquetFiles.params()]
        ['paths', 'columns', 'row_groups', 'storage_options']
        """
        return [
            Param("paths", "A path, URL or glob of .parquet files, or a list of them",
                  type=PathList),
            Param("columns", "Comma-separated columns to read (empty: all)", type=str,
                  default=""),
            Param("row_groups", "One index per row group instead of per file", type=bool,
                  default=False),
            STORAGE_OPTIONS,
        ]

    def __len__(self) -> int:
        """Number of indices (files, or row groups with ``row_groups``)."""
        return len(self.units)

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]] | None:
        """With ``row_groups``: the indices of each file in one group, ascending.

        Returns
        -------
        list[list[int]] or None
            ``None`` without ``row_groups`` (every file is independent).

        Examples
        --------
        >>> import tempfile, os, pyarrow as pa, pyarrow.parquet as pq
        >>> d = tempfile.mkdtemp()
        >>> for name in ("a", "b"):
        ...     pq.write_table(pa.table({"x": [1, 2]}), os.path.join(d, name + ".parquet"),
        ...                    row_group_size=1)
        >>> ParquetFiles(paths=os.path.join(d, "*.parquet"), row_groups=True
        ...              ).partition_indices([3, 0, 1, 2])
        [[0, 1], [2, 3]]
        """
        if not self.row_groups:
            return None
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(self.units[int(i)][0], []).append(int(i))
        return sorted((sorted(group) for group in groups.values()), key=lambda g: g[0])

    def __getitem__(self, index: int) -> Iterator[Item]:
        """The rows of index ``index``, one item per row.

        Raises
        ------
        IndexError
            If ``index`` is out of range (at once).
        OSError, pyarrow.ArrowException
            While iterating, if the file is missing or not valid Parquet.
        """
        i = normalise_index(index, len(self.units))
        return self._read(i)

    def _read(self, i: int) -> Iterator[Item]:
        path, group = self.units[i]
        options = resolve_storage_options(self.storage_options, self.name)
        columns = self.columns or None
        with open_input(path, options, compression=None) as fh:
            parquet = pq.ParquetFile(fh)
            if group is None:
                row = 0
                batches = parquet.iter_batches(columns=columns)
                extra: dict[str, Any] = {}
            else:
                meta = parquet.metadata
                row = sum(meta.row_group(g).num_rows for g in range(group))
                batches = iter(parquet.read_row_group(group, columns=columns).to_batches())
                extra = {"row_group": group}
            for batch in batches:
                for record in batch.to_pylist():
                    yield {"index": i, "path": path, "row": row, **extra, "fields": record}
                    row += 1


class ParquetSink(Sink[Item]):
    """One Parquet file per index: ``{output_dir}/{prefix}_{index:08d}.parquet``.

    The records of an index (each item's ``fields``, or a plain dict item) become one
    table, written whole: a local path through a temporary file and a rename, a URL with
    one write (one PUT) of its final name. An index with no items gets a file with no
    columns and no rows. Records whose values cannot share a column type fail the index.

    Parameters
    ----------
    output_dir : str
        Directory or URL prefix.
    prefix : str, optional
        File name prefix (default ``"part"``).
    compression : str, optional
        One of ``none``, ``snappy`` (default), ``gzip``, ``brotli``, ``lz4``, ``zstd``.
    storage_options : dict, optional
        fsspec options for URLs; credentials only as ``"${ENV_VARIABLE}"``.

    Examples
    --------
    >>> import tempfile, pyarrow.parquet as pq
    >>> sink = ParquetSink(output_dir=tempfile.mkdtemp())
    >>> [path] = sink(iter([{"fields": {"text": "hi", "n": 1}}]), 2)
    >>> path.endswith("part_00000002.parquet"), pq.read_table(path).to_pylist()
    (True, [{'text': 'hi', 'n': 1}])
    """

    name = "ParquetSink"
    description = "One .parquet file per index (local paths or fsspec URLs), written whole."

    def __init__(self, output_dir: str, prefix: str = "part", compression: str = "snappy",
                 storage_options: dict[str, Any] | None = None) -> None:
        self.output_dir = check_location(str(output_dir), self.name)
        self.prefix = str(prefix)
        self.compression = _check_compression(compression, self.name)
        self.storage_options = check_storage_options(storage_options, self.name)

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`ParquetSink`.

        Examples
        --------
        >>> [p.name for p in ParquetSink.params()]
        ['output_dir', 'prefix', 'compression', 'storage_options']
        """
        return [
            Param("output_dir", "Directory or URL prefix of the .parquet files", type=str),
            Param("prefix", "File name prefix", type=str, default="part"),
            COMPRESSION,
            STORAGE_OPTIONS,
        ]

    def path_for(self, index: int) -> str:
        """The output path of ``index``.

        Examples
        --------
        >>> ParquetSink(output_dir="out").path_for(7)
        'out/part_00000007.parquet'
        """
        return join(self.output_dir, f"{self.prefix}_{int(index):08d}.parquet")

    def __call__(self, items: Iterator[Item], index: int) -> list[str]:
        """Write the records of ``index`` as one Parquet file; return ``[path]``."""
        table = pa.Table.from_pylist(records_of(items))
        path = self.path_for(index)
        write_bytes(path, table_bytes(table, self.compression),
                    resolve_storage_options(self.storage_options, self.name))
        logger.debug("ParquetSink wrote index %d to %s", index, path)
        return [path]


def _check_compression(value: str, owner: str) -> str:
    value = str(value).lower()
    if value not in COMPRESSIONS:
        raise ValueError(
            f"{owner}: compression {value!r} is not one of {', '.join(COMPRESSIONS)}."
        )
    return value


class ParquetChunked(ChunkedRecords):
    """Indices grouped into Parquet chunk files of ``chunk_size`` consecutive indices.

    Index ``i`` goes into ``{output_dir}/{prefix}_{i // chunk_size:06d}.parquet``; its rows
    get a first column ``index_field`` (default ``"_index"``, int64) holding ``i``. Writing
    an index reads the chunk, drops that index's rows, adds the new ones (column types
    unified), orders rows by index (stable) and writes the chunk back whole, so rewriting
    an index is idempotent. A chunk has one writer: see :meth:`partition_indices`.

    Parameters
    ----------
    output_dir : str
        Directory or URL prefix of the chunk files.
    chunk_size : int, optional
        Indices per chunk (default 16).
    prefix : str, optional
        File name prefix (default ``"chunk"``).
    index_field : str, optional
        Name of the index column (default ``"_index"``); a record that already has it
        fails its index.
    compression : str, optional
        Parquet codec (default ``"snappy"``).
    storage_options : dict, optional
        fsspec options for URLs; credentials only as ``"${ENV_VARIABLE}"``.

    Examples
    --------
    >>> import tempfile, pyarrow.parquet as pq
    >>> sink = ParquetChunked(output_dir=tempfile.mkdtemp(), chunk_size=4)
    >>> _ = sink(iter([{"fields": {"n": 5}}]), 5)
    >>> [path] = sink(iter([{"fields": {"n": 4}}]), 4)
    >>> pq.read_table(path).to_pylist()
    [{'_index': 4, 'n': 4}, {'_index': 5, 'n': 5}]
    """

    name = "ParquetChunked"
    description = "Chunk .parquet files of chunk_size consecutive indices, rewritten whole."
    extension = "parquet"

    def __init__(self, output_dir: str, chunk_size: int = 16, prefix: str = "chunk",
                 index_field: str = "_index", compression: str = "snappy",
                 storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(output_dir, chunk_size, prefix, index_field, storage_options)
        self.compression = _check_compression(compression, self.name)

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`ParquetChunked`.

        Examples
        --------
        >>> [p.name for p in ParquetChunked.params()][:2]
        ['output_dir', 'chunk_size']
        >>> ParquetChunked(output_dir="out", chunk_size=4).path_for(9)
        'out/chunk_000002.parquet'
        >>> ParquetChunked(output_dir="out", chunk_size=4).partition_indices([9, 1, 0, 8])
        [[0, 1], [8, 9]]
        """
        return [*cls.chunk_params("Name of the index column"), COMPRESSION, STORAGE_OPTIONS]

    def __call__(self, items: Iterator[Item], index: int) -> list[str]:
        """Add or replace the rows of ``index`` in its chunk file; return ``[chunk path]``."""
        index = int(index)
        new = pa.Table.from_pylist(self.records_for(items, index))
        new = new.add_column(0, pa.field(self.index_field, pa.int64()),
                             [pa.array([index] * new.num_rows, pa.int64())])
        path = self.path_for(index)
        options = resolve_storage_options(self.storage_options, self.name)
        table = new
        if exists(path, options):
            old = pq.read_table(io.BytesIO(read_bytes(path, options)))
            old = old.filter(pc.not_equal(old[self.index_field], index))
            table = pa.concat_tables([old, new], promote_options="default")
            table = table.take(pc.sort_indices(table, [(self.index_field, "ascending")]))
        write_bytes(path, table_bytes(table, self.compression), options)
        logger.debug("ParquetChunked wrote index %d to %s", index, path)
        return [path]
