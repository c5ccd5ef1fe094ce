"""Running one index through source → filters → sink, optionally timing each stage.

Used by :meth:`Pipeline.run_valid_index` (every backend runs indices through it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from types import GeneratorType
from typing import Any


def source_items(source: Any, index: int) -> Iterator[Any]:
    """The items of ``source[index]`` as an iterator.

    A generator or iterator is used as is; a list or tuple is a sequence of items; any
    other value is a single item.
    """
    produced = source[index]
    if type(produced) is GeneratorType or isinstance(produced, Iterator):  # fast path first
        return produced
    if isinstance(produced, list | tuple):
        return iter(produced)
    if produced is None:
        return iter(())
    return iter((produced,))


class Timed:
    """An iterator that adds the time spent in ``next()`` to its clock (for stage timings)."""

    __slots__ = ("_it", "_clock")

    def __init__(self, it: Iterator[Any], clocks: list[list[float]]) -> None:
        self._it = it
        self._clock = [0.0]  # seconds spent in next(), upstream stages included
        clocks.append(self._clock)

    def __iter__(self) -> Timed:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self._clock[0] += time.perf_counter() - start


def run_chain(
    source: Any,
    chain: Sequence[Callable[[Iterator[Any]], Any]],
    sink: Callable[[Iterator[Any], int], Any],
    index: int,
    timings: dict[str, float] | None = None,
) -> list[str]:
    """Run ``index`` of ``source`` through the filters of ``chain`` into ``sink``; return
    the paths the sink wrote (as strings).

    With ``timings``, adds the seconds spent in each stage, exclusive of the stages
    upstream: ``source``, ``filter[0]:<Name>``, ..., ``sink``.
    """
    if timings is None:
        items: Iterator[Any] = source_items(source, index)
        for f in chain:
            items = iter(f(items))
        paths = sink(items, index)
        return [str(p) for p in (paths or [])]

    clocks: list[list[float]] = []
    start = time.perf_counter()
    items = Timed(source_items(source, index), clocks)
    for f in chain:
        items = Timed(iter(f(items)), clocks)
    before_sink = time.perf_counter()
    paths = sink(items, index)
    total = time.perf_counter() - before_sink
    names = ["source"] + [f"filter[{n}]:{type(f).__name__}" for n, f in enumerate(chain)]
    spent = {"source": before_sink - start}  # building the generators counts as source
    upstream = 0.0
    for name, clock in zip(names, clocks, strict=True):
        spent[name] = spent.get(name, 0.0) + max(clock[0] - upstream, 0.0)
        upstream = clock[0]
    spent["sink"] = max(total - upstream, 0.0)
    for name, seconds in spent.items():
        timings[name] = timings.get(name, 0.0) + seconds
    return [str(p) for p in (paths or [])]
