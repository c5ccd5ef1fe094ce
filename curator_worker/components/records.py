"""Records: the row-shaped items of the JSONL and Parquet components.

A record item is ``{"index": i, "path": source file, "row": k, "fields": {column: value}}``
(Parquet row-group sources add ``"row_group"``). Sinks write ``item["fields"]`` (or a plain
dict item as it is); numpy arrays and scalars in values become lists and Python numbers.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from curator_worker.components.storage import check_location, check_storage_options, join
from curator_worker.contract.pipeline import Param, Sink

Item = dict[str, Any]

__all__ = ["STORAGE_OPTIONS", "ChunkedRecords", "chunk_groups", "json_default", "plain",
           "record_of", "records_of"]

#: The ``storage_options`` parameter every record component takes.
STORAGE_OPTIONS = Param("storage_options", "fsspec options for URLs (credentials only as "
                        "'${ENV_VARIABLE}')", type=dict, default=None)


def plain(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into lists and Python scalars.

    Examples
    --------
    >>> import numpy as np
    >>> plain({"a": np.arange(2), "b": [np.float64(1.5)]})
    {'a': [0, 1], 'b': [1.5]}
    """
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def record_of(item: Any) -> dict[str, Any]:
    """The record a sink writes for ``item``: its ``fields``, or the dict itself.

    Raises
    ------
    TypeError
        If ``item`` is not a dict (naming its type).

    Examples
    --------
    >>> record_of({"index": 0, "fields": {"text": "hi"}}), record_of({"text": "hi"})
    ({'text': 'hi'}, {'text': 'hi'})
    """
    if isinstance(item, dict):
        fields = item.get("fields")
        if isinstance(fields, dict):
            return plain(fields)
        return plain(item)
    raise TypeError(
        f"record sinks write dict items ({{'fields': {{...}}}} or a plain dict), "
        f"got {type(item).__name__}."
    )


def records_of(items: Iterator[Any]) -> list[dict[str, Any]]:
    """:func:`record_of` of every item, in order."""
    return [record_of(item) for item in items]


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for values Parquet gives: dates, decimals, bytes."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    raise TypeError(f"a value of type {type(value).__name__} cannot be written as JSON.")


def chunk_groups(indices: Sequence[int], chunk_size: int) -> list[list[int]]:
    """``indices`` grouped by chunk (``i // chunk_size``), ascending, ordered by chunk.

    Examples
    --------
    >>> chunk_groups([9, 1, 0, 8, 5], 4)
    [[0, 1], [5], [8, 9]]
    """
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(int(i) // chunk_size, []).append(int(i))
    return [sorted(groups[chunk]) for chunk in sorted(groups)]


class ChunkedRecords(Sink[Item]):
    """What the chunked record sinks share: chunk files of ``chunk_size`` consecutive
    indices, one writer per chunk, an index field on every record.

    Index ``i`` goes into ``{output_dir}/{prefix}_{i // chunk_size:06d}.{extension}``.
    Subclasses set :attr:`extension` and write a chunk in ``__call__`` with the records
    :meth:`records_for` gives.
    """

    #: File name extension of the chunk files (without the dot).
    extension = ""

    def __init__(self, output_dir: str, chunk_size: int = 16, prefix: str = "chunk",
                 index_field: str = "_index",
                 storage_options: dict[str, Any] | None = None) -> None:
        self.output_dir = check_location(str(output_dir), self.name)
        self.chunk_size = int(chunk_size)
        self.prefix = str(prefix)
        self.index_field = str(index_field)
        self.storage_options = check_storage_options(storage_options, self.name)
        if self.chunk_size < 1:
            raise ValueError(f"{self.name} chunk_size must be >= 1, got {self.chunk_size}.")

    @classmethod
    def chunk_params(cls, index_field_help: str) -> list[Param]:
        """The parameters every chunked sink takes, ``storage_options`` excepted."""
        return [
            Param("output_dir", "Directory or URL prefix of the chunk files", type=str),
            Param("chunk_size", "Indices per chunk file", type=int, default=16),
            Param("prefix", "File name prefix", type=str, default="chunk"),
            Param("index_field", index_field_help, type=str, default="_index"),
        ]

    def path_for(self, index: int) -> str:
        """The chunk file of ``index``."""
        return join(self.output_dir,
                    f"{self.prefix}_{int(index) // self.chunk_size:06d}.{self.extension}")

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]]:
        """Group ``indices`` by chunk, so each chunk file has a single writer."""
        return chunk_groups(indices, self.chunk_size)

    def records_for(self, items: Iterator[Any], index: int) -> list[dict[str, Any]]:
        """The records of ``index``; one that already has :attr:`index_field` fails it."""
        records = records_of(items)
        for record in records:
            if self.index_field in record:
                raise ValueError(
                    f"{self.name}: a record of index {index} already has a field "
                    f"{self.index_field!r}. Set index_field to a name the records do not use."
                )
        return records
