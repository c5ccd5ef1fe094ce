"""Components written exactly as a physicsnemo-curator user writes them.

Only the import line differs (``curator_worker`` instead of
``physicsnemo_curator.core.base``): class-level ``name`` / ``description`` (display names
with spaces), a ``params()`` classmethod of keyword-built :class:`Param`, generator
filters, and a stateful filter in the style of physicsnemo-curator's own ``MeanFilter`` /
``RunningVarianceFilter``: a :class:`pathlib.Path` ``_output_path``, rows accumulated in
``__call__``, a ``flush()`` that APPENDS them to ``_output_path`` (creating its parent) and
returns the path, and a static ``merge(paths, output)`` that concatenates per-worker files.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Generator
from typing import ClassVar

import numpy as np

from curator_worker import Filter, Param, Sink, Source


class SquaresSource(Source[dict]):
    """Index ``i`` yields one record with ``i`` and an array of ``i**2 * scale``.

    Parameters
    ----------
    n : int
        Number of indices.
    scale : float
        Multiplies every value.
    """

    name: ClassVar[str] = "Synthetic Squares"
    description: ClassVar[str] = "One record of squares per index"

    @classmethod
    def params(cls) -> list[Param]:
        """Return parameter descriptors."""
        return [
            Param(name="n", description="Number of indices", type=int),
            Param(name="scale", description="Value multiplier", type=float, default=1.0),
        ]

    def __init__(self, n: int, scale: float = 1.0) -> None:
        self._n = n
        self._scale = scale

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int) -> Generator[dict]:
        yield {"index": index, "values": np.arange(4, dtype=np.float64) * index**2 * self._scale}


class OffsetFilter(Filter[dict]):
    """Add ``offset`` to every value (stateless, pass-through shape)."""

    name: ClassVar[str] = "Offset Values"
    description: ClassVar[str] = "Add a constant to every value"

    @classmethod
    def params(cls) -> list[Param]:
        """Return parameter descriptors."""
        return [Param(name="offset", description="Added to every value", type=float)]

    def __init__(self, offset: float) -> None:
        self._offset = offset

    def __call__(self, items: Generator[dict]) -> Generator[dict]:
        for item in items:
            yield {**item, "values": item["values"] + self._offset}


class RowStatsFilter(Filter[dict]):
    """Stateful: one CSV row (index, count, sum, max) per record, physicsnemo style."""

    name: ClassVar[str] = "Row Statistics"
    description: ClassVar[str] = "Per-record statistics appended to a CSV file"

    @classmethod
    def params(cls) -> list[Param]:
        """Return parameter descriptors."""
        return [Param(name="output", description="Output CSV path", type=str)]

    def __init__(self, output: str) -> None:
        self._output_path = pathlib.Path(output)
        self._rows: list[dict[str, object]] = []

    def __call__(self, items: Generator[dict]) -> Generator[dict]:
        for item in items:
            values = item["values"]
            self._rows.append({"index": item["index"], "count": values.size,
                               "sum": repr(float(values.sum())), "max": repr(float(values.max()))})
            yield item

    def flush(self) -> str | None:
        """Append the accumulated rows to ``_output_path``; return its path."""
        if not self._rows:
            return None
        path = pathlib.Path(self._output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["index", "count", "sum", "max"])
            if new:
                writer.writeheader()
            writer.writerows(self._rows)
        self._rows.clear()
        return str(path)

    @staticmethod
    def merge(csv_paths: list[str], output: str) -> str:
        """Concatenate per-worker CSV files into ``output`` (one header)."""
        rows: list[dict[str, str]] = []
        for p in csv_paths:
            with open(p, newline="") as f:
                rows.extend(csv.DictReader(f))
        out_path = pathlib.Path(output)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with out_path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["index", "count", "sum", "max"])
            writer.writeheader()
            writer.writerows(rows)
        return str(out_path)


class CsvSink(Sink[dict]):
    """Write each index's records to ``<output_dir>/sample_<index>.csv``."""

    name: ClassVar[str] = "CSV Writer"
    description: ClassVar[str] = "One CSV file per index"

    @classmethod
    def params(cls) -> list[Param]:
        """Return parameter descriptors."""
        return [Param(name="output_dir", description="Output directory", type=str)]

    def __init__(self, output_dir: str) -> None:
        self._output_dir = pathlib.Path(output_dir)

    def __call__(self, items: Generator[dict], index: int) -> list[str]:
        self._output_dir.mkdir(parents=True, exist_ok=True)
        path = self._output_dir / f"sample_{index:04d}.csv"
        with path.open("w") as out:
            for item in items:
                out.write(",".join(repr(float(v)) for v in item["values"]) + "\n")
        return [str(path)]
