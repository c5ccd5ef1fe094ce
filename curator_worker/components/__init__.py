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

from curator_worker.components.filters import FieldStats
from curator_worker.components.jsonl import JsonlChunked, JsonlFiles, JsonlSink
from curator_worker.components.parquet import ParquetChunked, ParquetFiles, ParquetSink
from curator_worker.components.sinks import NpzChunked, NpzPerIndex
from curator_worker.components.sources import FileGlob, SyntheticArrays
from curator_worker.components.text import TextStats

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
