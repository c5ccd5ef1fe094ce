"""Ready-made components: sources, filters and sinks for array datasets.

Examples
--------
>>> from curator_worker.components import SyntheticArrays, NpzPerIndex
>>> pipeline = SyntheticArrays(count=2).write(NpzPerIndex(output_dir="out"))
>>> len(pipeline)
2
"""

from __future__ import annotations

from curator_worker.components.filters import FieldStats
from curator_worker.components.sinks import NpzChunked, NpzPerIndex
from curator_worker.components.sources import FileGlob, SyntheticArrays

__all__ = ["FieldStats", "FileGlob", "NpzChunked", "NpzPerIndex", "SyntheticArrays"]
