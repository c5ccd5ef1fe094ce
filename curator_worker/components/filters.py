"""Filters: transform or observe the items of one index.

:class:`FieldStats` is a *stateful* filter (see
:func:`curator_worker.contract.pipeline.is_stateful`): it accumulates exact per-field
statistics, flushes them to a shard file and merges shards into a result that is
bit-identical to a single sequential run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from curator_worker.atomic import atomic_path
from curator_worker.contract.pipeline import Filter, Param

logger = logging.getLogger(__name__)

__all__ = ["FieldStats"]

Item = dict[str, Any]

#: dtype kinds that FieldStats treats as numeric (signed, unsigned, float).
_NUMERIC_KINDS = frozenset("iuf")


#: Arrays up to this many elements are summed with ``math.fsum`` over a list; bigger ones
#: with :func:`_exact_array_sum` (vectorised, ~20x faster per element on big arrays).
_FSUM_MAX_ELEMENTS = 256
#: Elements per chunk of :func:`_exact_array_sum` (bounds its temporary memory, and keeps
#: every per-exponent float sum of 27-bit integers below 2**53, hence exact).
_EXACT_SUM_CHUNK = 1 << 16


def _exact_sum(values: list[float]) -> Fraction:
    """The correctly rounded ``math.fsum`` of ``values`` as a Fraction (exact if it overflows)."""
    try:
        total = math.fsum(values)
    except OverflowError:
        total = math.inf
    if math.isfinite(total):
        return Fraction(total)
    return sum((Fraction(v) for v in values), Fraction(0))


def _exact_array_sum(flat: np.ndarray) -> Fraction:
    """:func:`_exact_sum` of a 1-D array of finite float64 values, vectorised.

    Every value is ``m * 2**e`` with an integer ``|m| < 2**53`` (``np.frexp``). ``m`` is
    split into a high and a low part of at most 27 bits, whose sums per exponent are
    exact in float64 for up to :data:`_EXACT_SUM_CHUNK` values (``np.bincount``); the
    per-exponent totals are combined as Python integers. The exact total is then rounded
    once to the nearest float, as ``math.fsum`` rounds (kept exact if that overflows).
    """
    total = 0  # the exact sum, in units of 2**lowest
    lowest: int | None = None
    for start in range(0, flat.size, _EXACT_SUM_CHUNK):
        chunk = flat[start : start + _EXACT_SUM_CHUNK]
        fraction, exponent = np.frexp(chunk)
        mantissa = (fraction * float(1 << 53)).astype(np.int64)  # exact: chunk = m * 2**(e-53)
        offset = int(exponent.min())
        bucket = (exponent - offset).astype(np.intp)
        high = mantissa >> 26  # floor division: mantissa = high * 2**26 + low, 0 <= low < 2**26
        low = mantissa - (high << 26)
        high_sums = np.bincount(bucket, weights=high.astype(np.float64))
        low_sums = np.bincount(bucket, weights=low.astype(np.float64))
        part = 0
        for k in np.flatnonzero((high_sums != 0) | (low_sums != 0)).tolist():
            part += ((int(high_sums[k]) << 26) + int(low_sums[k])) << k
        base = offset - 53
        if lowest is None:
            total, lowest = part, base
        elif base >= lowest:
            total += part << (base - lowest)
        else:
            total, lowest = (total << (lowest - base)) + part, base
    if lowest is None:
        return Fraction(0)
    exact = Fraction(total << lowest) if lowest >= 0 else Fraction(total, 1 << -lowest)
    try:
        return Fraction(float(exact))
    except OverflowError:
        return exact


def _sum_of(flat: np.ndarray) -> Fraction:
    """:func:`_exact_sum` of a 1-D finite float64 array, by the faster method for its size."""
    if flat.size <= _FSUM_MAX_ELEMENTS:
        return _exact_sum(flat.tolist())
    return _exact_array_sum(flat)


def _lesser(a: float, b: float) -> float:
    """``min(a, b)`` independent of argument order (``-0.0`` wins over ``0.0``)."""
    if a < b:
        return a
    if b < a:
        return b
    return a if math.copysign(1.0, a) < 0 else b


def _greater(a: float, b: float) -> float:
    """``max(a, b)`` independent of argument order (``0.0`` wins over ``-0.0``)."""
    if a > b:
        return a
    if b > a:
        return b
    return a if math.copysign(1.0, a) > 0 else b


@dataclass
class _Accumulator:
    """Exact running totals of one field."""

    count: int
    sum: Fraction
    sumsq: Fraction
    min: float
    max: float

    def add(self, other: _Accumulator) -> None:
        self.count += other.count
        self.sum += other.sum
        self.sumsq += other.sumsq
        self.min = _lesser(self.min, other.min)
        self.max = _greater(self.max, other.max)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": [self.sum.numerator, self.sum.denominator],
            "sumsq": [self.sumsq.numerator, self.sumsq.denominator],
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Accumulator:
        return cls(
            count=int(data["count"]),
            sum=Fraction(int(data["sum"][0]), int(data["sum"][1])),
            sumsq=Fraction(int(data["sumsq"][0]), int(data["sumsq"][1])),
            min=float(data["min"]),
            max=float(data["max"]),
        )

    def summary(self) -> dict[str, Any]:
        mean = self.sum / self.count
        variance = self.sumsq / self.count - mean * mean
        return {
            "count": self.count,
            "mean": float(mean),
            "std": math.sqrt(max(0.0, float(variance))),
            "min": self.min,
            "max": self.max,
        }


def _observe_array(value: Any) -> _Accumulator | None:
    """Totals of one array's finite elements, or None if it is not numeric or has none."""
    arr = np.asarray(value)
    if arr.dtype.kind not in _NUMERIC_KINDS:
        return None
    flat = arr.astype(np.float64, copy=False).ravel()
    finite = np.isfinite(flat)
    if not finite.all():
        flat = flat[finite]
    if flat.size == 0:
        return None
    with np.errstate(over="ignore"):
        squares = flat * flat
    if np.isfinite(squares).all():
        sumsq = _sum_of(squares)
    else:
        sumsq = sum((Fraction(v) ** 2 for v in flat.tolist()), Fraction(0))
    return _Accumulator(
        count=int(flat.size),
        sum=_sum_of(flat),
        sumsq=sumsq,
        min=float(flat.min()),
        max=float(flat.max()),
    )


def _stats_document(state: dict[str, _Accumulator], items: int) -> dict[str, Any]:
    """The JSON document of ``state``: the one format of flushed and merged files."""
    names = sorted(name for name, acc in state.items() if acc.count > 0)
    return {
        "fields": {name: state[name].summary() for name in names},
        "items": int(items),
        "state": {name: state[name].to_json() for name in names},
    }


def _write_stats(path: str, state: dict[str, _Accumulator], items: int) -> str:
    """Write the stats document of ``state`` to ``path`` atomically; return ``path``."""
    text = json.dumps(_stats_document(state, items), sort_keys=True, indent=2, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return str(path)


def _read_stats(path: str) -> tuple[dict[str, _Accumulator], int]:
    """The state and item count of a FieldStats JSON file."""
    with open(path, encoding="utf-8") as fh:
        try:
            doc = json.load(fh)
            state = {name: _Accumulator.from_json(d) for name, d in doc["state"].items()}
            items = int(doc["items"])
        except (ValueError, KeyError, TypeError, IndexError, ZeroDivisionError) as exc:
            raise ValueError(
                f"{path} is not a FieldStats file ({type(exc).__name__}: {exc}). "
                "Merge only files written by FieldStats.flush() or FieldStats.merge()."
            ) from None
    return state, items


class FieldStats(Filter[Item]):
    """Per-field count, mean, std, min and max, exactly mergeable across workers.

    Items pass through unchanged. For each numeric field (integer or float arrays; only
    finite elements count) the filter keeps the element count, min, max and the exact
    sums of the per-item ``math.fsum`` of the values and of their squares as
    :class:`fractions.Fraction`. Because those totals are exact, shards flushed by
    parallel workers merge into a file byte-identical to a sequential run, whatever the
    batching and the merge order. Arrays of more than 256 elements are summed vectorised
    (exact integer sums per binary exponent, rounded once: the same result as
    ``math.fsum``, about 10x faster; 10 million float64 values take ~0.2 s).

    Stateful protocol: :meth:`flush` writes the state to ``self._output_path`` (runners
    point it at a shard file), :meth:`merge` combines shard files.

    Output JSON: ``{"fields": {name: {"count", "mean", "std", "min", "max"}}, "items": n,
    "state": {name: {"count", "sum": [num, den], "sumsq": [num, den], "min", "max"}}}``;
    ``std`` is the population standard deviation.

    Parameters
    ----------
    output : str
        Path of the final JSON file.
    fields : str, optional
        Comma-separated fields to summarise; ``""`` (default) means every numeric field.

    Examples
    --------
    >>> import numpy as np, tempfile, os, json
    >>> out = os.path.join(tempfile.mkdtemp(), "stats.json")
    >>> stats = FieldStats(output=out)
    >>> _ = list(stats(iter([{"index": 0, "fields": {"x": np.array([1.0, 3.0])}}])))
    >>> json.load(open(stats.flush()))["fields"]["x"]["mean"]
    2.0
    """

    name = "FieldStats"
    description = "Exact, mergeable per-field count/mean/std/min/max (stateful)."

    def __init__(self, output: str, fields: str = "") -> None:
        self.output = str(output)
        self.fields = [part.strip() for part in str(fields).split(",") if part.strip()]
        self._output_path = self.output
        self._state: dict[str, _Accumulator] = {}
        self._items = 0

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters of :class:`FieldStats`.

        Returns
        -------
        list[Param]
            One :class:`Param` per ``__init__`` keyword argument.

        Examples
        --------
        >>> [p.name for p in FieldStats.params()]
        ['output', 'fields']
        """
        return [
            Param("output", "Path of the statistics JSON file", type=str),
            Param("fields", "Comma-separated fields to summarise (empty: all numeric)",
                  type=str, default=""),
        ]

    def __call__(self, items: Iterator[Item]) -> Iterator[Item]:
        """Pass ``items`` through, accumulating their statistics.

        Parameters
        ----------
        items : Iterator[dict]
            Items ``{"index", "fields": {name: ndarray}}``.

        Returns
        -------
        Iterator[dict]
            The same items, unchanged.

        Examples
        --------
        >>> stats = FieldStats(output="unused.json")
        >>> len(list(stats(iter([{"index": 0, "fields": {}}]))))
        1
        """
        for item in items:
            self.observe(item)
            yield item

    def observe(self, item: Item) -> None:
        """Add one item to the statistics.

        Parameters
        ----------
        item : dict
            An item; its ``"fields"`` mapping (if any) is read.

        Examples
        --------
        >>> import numpy as np
        >>> stats = FieldStats(output="unused.json")
        >>> stats.observe({"index": 0, "fields": {"x": np.ones(3)}})
        >>> stats.summary()["fields"]["x"]["count"]
        3
        """
        self._items += 1
        fields = item.get("fields") if isinstance(item, dict) else None
        if not isinstance(fields, dict):
            return
        wanted = self.fields or sorted(fields)
        for name in wanted:
            if name not in fields:
                continue
            acc = _observe_array(fields[name])
            if acc is None:
                continue
            current = self._state.get(name)
            if current is None:
                self._state[name] = acc
            else:
                current.add(acc)

    def summary(self) -> dict[str, Any]:
        """The current statistics, as the document :meth:`flush` would write.

        Returns
        -------
        dict
            ``{"fields": ..., "items": ..., "state": ...}``.

        Examples
        --------
        >>> FieldStats(output="unused.json").summary()
        {'fields': {}, 'items': 0, 'state': {}}
        """
        return _stats_document(self._state, self._items)

    def flush(self) -> str:
        """Write the current statistics to ``self._output_path`` atomically.

        Returns
        -------
        str
            The path written.

        Examples
        --------
        >>> import tempfile, os
        >>> stats = FieldStats(output=os.path.join(tempfile.mkdtemp(), "s.json"))
        >>> os.path.exists(stats.flush())
        True
        """
        path = _write_stats(self._output_path, self._state, self._items)
        logger.debug("FieldStats flushed %d items to %s", self._items, path)
        return path

    @staticmethod
    def merge(shard_paths: Iterable[str], output_path: str) -> str:
        """Combine shard files written by :meth:`flush` into ``output_path``.

        The sums are exact, so the result does not depend on the order of
        ``shard_paths`` and equals byte for byte what one sequential run writes.

        Parameters
        ----------
        shard_paths : list[str]
            Files written by :meth:`flush` (or :meth:`merge`); may be empty.
        output_path : str
            Where to write the merged JSON (atomically).

        Returns
        -------
        str
            ``output_path``.

        Raises
        ------
        ValueError
            If a shard is not a FieldStats file.

        Examples
        --------
        >>> import tempfile, os, json
        >>> out = FieldStats.merge([], os.path.join(tempfile.mkdtemp(), "m.json"))
        >>> json.load(open(out))
        {'fields': {}, 'items': 0, 'state': {}}
        """
        state: dict[str, _Accumulator] = {}
        items = 0
        paths = [str(p) for p in shard_paths]
        for path in paths:
            shard_state, shard_items = _read_stats(path)
            items += shard_items
            for name, acc in shard_state.items():
                if name in state:
                    state[name].add(acc)
                else:
                    state[name] = acc
        logger.debug("FieldStats merged %d shards into %s", len(paths), output_path)
        return _write_stats(output_path, state, items)

    def artifacts(self) -> list[str]:
        """The final statistics file.

        Returns
        -------
        list[str]
            ``[output]``.

        Examples
        --------
        >>> FieldStats(output="s.json").artifacts()
        ['s.json']
        """
        return [self.output]
