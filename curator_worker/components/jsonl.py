"""JSON Lines: the :class:`JsonlFiles` source and the :class:`JsonlSink` and :class:`JsonlChunked`
sinks, on local paths and fsspec URLs.

Each line of a ``.jsonl`` file is one JSON object, one record. Sinks write one compact line
per record (``ensure_ascii=False``, keys in the record's order), so equal inputs give equal
bytes on every backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from curator_worker.components.records import (
    STORAGE_OPTIONS,
    ChunkedRecords,
    json_default,
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

__all__ = ["JsonlChunked", "JsonlFiles", "JsonlSink"]

Item = dict[str, Any]


def encode_line(record: dict[str, Any]) -> bytes:
    """One JSONL line (with its newline) for ``record``.

    Examples
    --------
    >>> encode_line({"text": "é", "n": 1})
    b'{"text":"\\xc3\\xa9","n":1}\\n'
    """
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=json_default)
    return text.encode("utf-8") + b"\n"


class JsonlFiles(Source[Item]):
    """One index per JSON Lines file; one item per line.

    Index ``i`` reads file ``files[i]`` and yields ``{"index": i, "path": file, "row": k,
    "fields": record}`` for its ``k``-th record (blank lines are skipped). Files ending in
    ``.gz``, ``.bz2``, ``.xz`` or ``.zst`` are decompressed. A missing file, a line that is
    not valid JSON or not a JSON object makes that index fail (an index failure, recorded
    like any other), never the run.

    The file list is resolved when the source is built: each glob's matches in sorted
    order, entries in the order given.

    Parameters
    ----------
    paths : str or list of str
        A path, ``file://`` or fsspec URL (``s3://bucket/raw/*.jsonl``), or a list of them;
        globs allowed (``**`` for any depth).
    storage_options : dict, optional
        fsspec options for URLs (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
        Credentials only as ``"${ENV_VARIABLE}"``, or from the environment or a profile:
        a spec's params are stored in the job store.

    Raises
    ------
    ValueError
        If a glob matches nothing or listing fails (unreachable endpoint, refused
        credentials), or ``storage_options`` holds a credential in clear.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "a.jsonl"), "w").write('{"text": "hi"}\\n')
    >>> src = JsonlFiles(paths=os.path.join(d, "*.jsonl"))
    >>> len(src), next(iter(src[0]))["fields"]
    (1, {'text': 'hi'})
    """

    name = "JsonlFiles"
    description = "One index per JSON Lines file (paths, globs or fsspec URLs); one item per line."

    def __init__(self, paths: str | list[str],
                 storage_options: dict[str, Any] | None = None) -> None:
        self.paths = PathList(paths)
        self.storage_options = check_storage_options(storage_options, self.name)
        options = resolve_storage_options(self.storage_options, self.name)
        self.files: tuple[str, ...] = tuple(list_files(self.paths, options, self.name))
        logger.debug("JsonlFiles listed %d files", len(self.files))

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`JsonlFiles`.

        Returns
        -------
        list[Param]
            One :class:`Param` per ``__init__`` keyword argument.

        Examples
        --------
        >>> [p.name for p in JsonlFiles.params()]
        ['paths', 'storage_options']
        """
        return [
            Param("paths", "A path, URL or glob of .jsonl files, or a list of them",
                  type=PathList),
            STORAGE_OPTIONS,
        ]

    def __len__(self) -> int:
        """Number of files."""
        return len(self.files)

    def __getitem__(self, index: int) -> Iterator[Item]:
        """The records of file number ``index``, one item per line.

        Raises
        ------
        IndexError
            If ``index`` is out of range (at once).
        ValueError
            While iterating, at a line that is not a JSON object (naming file and line).
        OSError
            While iterating, if the file cannot be read (``FileNotFoundError`` if missing).
        """
        i = normalise_index(index, len(self.files))
        return self._read(i)

    def _read(self, i: int) -> Iterator[Item]:
        path = self.files[i]
        options = resolve_storage_options(self.storage_options, self.name)
        row = 0
        with open_input(path, options) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ValueError(
                        f"{path}: line {lineno} is not valid JSON ({exc}). Fix or remove it."
                    ) from None
                if not isinstance(record, dict):
                    raise ValueError(
                        f"{path}: line {lineno} is a JSON {type(record).__name__}, not an "
                        "object. Each line must be one JSON object."
                    )
                yield {"index": i, "path": path, "row": row, "fields": record}
                row += 1


class JsonlSink(Sink[Item]):
    """One JSON Lines file per index: ``{output_dir}/{prefix}_{index:08d}.jsonl``.

    Each item becomes one line: its ``fields`` (or the item itself when it is a plain
    dict). The file is written whole, never partially: a local path through a temporary
    file and a rename, a URL with one write (one PUT) of its final name. An index with
    no items gets an empty file.

    Parameters
    ----------
    output_dir : str
        Directory or URL prefix (``s3://bucket/out``).
    prefix : str, optional
        File name prefix (default ``"part"``).
    storage_options : dict, optional
        fsspec options for URLs; credentials only as ``"${ENV_VARIABLE}"``.

    Examples
    --------
    >>> import tempfile
    >>> sink = JsonlSink(output_dir=tempfile.mkdtemp())
    >>> [path] = sink(iter([{"fields": {"text": "hi"}}]), 3)
    >>> path.endswith("part_00000003.jsonl"), open(path).read()
    (True, '{"text":"hi"}\\n')
    """

    name = "JsonlSink"
    description = "One .jsonl file per index (local paths or fsspec URLs), written whole."

    def __init__(self, output_dir: str, prefix: str = "part",
                 storage_options: dict[str, Any] | None = None) -> None:
        self.output_dir = check_location(str(output_dir), self.name)
        self.prefix = str(prefix)
        self.storage_options = check_storage_options(storage_options, self.name)

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`JsonlSink`.

        Examples
        --------
        >>> [p.name for p in JsonlSink.params()]
        ['output_dir', 'prefix', 'storage_options']
        """
        return [
            Param("output_dir", "Directory or URL prefix of the .jsonl files", type=str),
            Param("prefix", "File name prefix", type=str, default="part"),
            STORAGE_OPTIONS,
        ]

    def path_for(self, index: int) -> str:
        """The output path of ``index``.

        Examples
        --------
        >>> JsonlSink(output_dir="s3://bucket/out").path_for(7)
        's3://bucket/out/part_00000007.jsonl'
        """
        return join(self.output_dir, f"{self.prefix}_{int(index):08d}.jsonl")

    def __call__(self, items: Iterator[Item], index: int) -> list[str]:
        """Write the records of ``index`` to its file; return ``[path]``."""
        data = b"".join(encode_line(record) for record in records_of(items))
        path = self.path_for(index)
        write_bytes(path, data, resolve_storage_options(self.storage_options, self.name))
        logger.debug("JsonlSink wrote index %d to %s", index, path)
        return [path]


class JsonlChunked(ChunkedRecords):
    """Indices grouped into JSON Lines chunk files of ``chunk_size`` consecutive indices.

    Index ``i`` goes into ``{output_dir}/{prefix}_{i // chunk_size:06d}.jsonl``; each of its
    records is written as one line with ``index_field`` (default ``"_index"``) first, then
    the record's own keys. Writing an index reads the chunk, replaces that index's lines
    (other lines are kept byte for byte), orders lines by index and writes the chunk back
    whole, so rewriting an index is idempotent. A chunk has one writer: see
    :meth:`partition_indices`.

    Parameters
    ----------
    output_dir : str
        Directory or URL prefix of the chunk files.
    chunk_size : int, optional
        Indices per chunk (default 16).
    prefix : str, optional
        File name prefix (default ``"chunk"``).
    index_field : str, optional
        Name of the field holding the index in each line (default ``"_index"``); a
        record that already has it fails its index.
    storage_options : dict, optional
        fsspec options for URLs; credentials only as ``"${ENV_VARIABLE}"``.

    Examples
    --------
    >>> import tempfile
    >>> sink = JsonlChunked(output_dir=tempfile.mkdtemp(), chunk_size=4)
    >>> [path] = sink(iter([{"fields": {"text": "b"}}]), 5)
    >>> [path] = sink(iter([{"fields": {"text": "a"}}]), 4)
    >>> path.endswith("chunk_000001.jsonl"), open(path).read().splitlines()
    (True, ['{"_index":4,"text":"a"}', '{"_index":5,"text":"b"}'])
    """

    name = "JsonlChunked"
    description = "Chunk .jsonl files of chunk_size consecutive indices, rewritten whole."
    extension = "jsonl"

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`JsonlChunked`.

        Examples
        --------
        >>> [p.name for p in JsonlChunked.params()][:2]
        ['output_dir', 'chunk_size']
        >>> JsonlChunked(output_dir="out", chunk_size=4).path_for(9)
        'out/chunk_000002.jsonl'
        >>> JsonlChunked(output_dir="out", chunk_size=4).partition_indices([9, 1, 0, 8, 5])
        [[0, 1], [5], [8, 9]]
        """
        return [*cls.chunk_params("Field holding each line's index"), STORAGE_OPTIONS]

    def __call__(self, items: Iterator[Item], index: int) -> list[str]:
        """Add or replace the lines of ``index`` in its chunk file; return ``[chunk path]``."""
        index = int(index)
        new_lines = [(index, encode_line({self.index_field: index, **record}))
                     for record in self.records_for(items, index)]
        path = self.path_for(index)
        options = resolve_storage_options(self.storage_options, self.name)
        kept: list[tuple[int, bytes]] = []
        if exists(path, options):
            for line in read_bytes(path, options).splitlines(keepends=True):
                if not line.strip():
                    continue
                owner = int(json.loads(line)[self.index_field])
                if owner != index:
                    kept.append((owner, line))
        lines = sorted(kept + new_lines, key=lambda pair: pair[0])  # stable: order kept
        write_bytes(path, b"".join(line for _, line in lines), options)
        logger.debug("JsonlChunked wrote index %d to %s", index, path)
        return [path]
