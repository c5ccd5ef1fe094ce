"""Ready-made components: sources, filters and sinks for array datasets and for records.

Arrays: :class:`SyntheticArrays`, :class:`FileGlob`, :class:`FieldStats`,
:class:`NpzPerIndex`, :class:`NpzChunked`. Records (JSON Lines and Parquet, on local paths
and fsspec URLs): :class:`JsonlFiles`, :class:`ParquetFiles`, :class:`TextStats`,
:class:`JsonlSink`, :class:`JsonlChunked`, :class:`ParquetSink`, :class:`ParquetChunked`.

Examples
--------
>>> from curator_worker.components import SyntheticArrays, NpzPerIndex
>>> pipeline = SyntheticArrays(count=2).write(NpzPerIndex(output_dir="out"))
>>> len(pipeline)
2
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from curator_worker.components.filters import FieldStats
from curator_worker.components.sinks import NpzChunked, NpzPerIndex
from curator_worker.components.sources import FileGlob, SyntheticArrays

if TYPE_CHECKING:
    from curator_worker.components.jsonl import JsonlChunked, JsonlFiles, JsonlSink
    from curator_worker.components.parquet import ParquetChunked, ParquetFiles, ParquetSink
    from curator_worker.components.text import TextStats

#: Record components, imported on first use: pyarrow and fsspec take ~0.3 s to import, which
#: a worker running only array components should not pay.
_LAZY = {
    "JsonlChunked": "jsonl", "JsonlFiles": "jsonl", "JsonlSink": "jsonl",
    "ParquetChunked": "parquet", "ParquetFiles": "parquet", "ParquetSink": "parquet",
    "TextStats": "text",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

__all__ = [
    "FieldStats",
    "FileGlob",
    "JsonlChunked",
    "JsonlFiles",
    "JsonlSink",
    "NpzChunked",
    "NpzPerIndex",
    "ParquetChunked",
    "ParquetFiles",
    "ParquetSink",
    "SyntheticArrays",
    "TextStats",
]
