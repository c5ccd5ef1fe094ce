"""Components that are wrong on purpose, for the bad-input table of ``curator-submit``.

Each one is valid Python and imports cleanly: what is wrong is what it declares (its
partitions, its kind, its abstractness), which ``curator-submit`` must catch before
anything is enqueued.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from curator_worker import Source
from curator_worker.components import NpzPerIndex, SyntheticArrays


class OverlappingGroupsArrays(SyntheticArrays):
    """Its partition puts every odd index in two groups: ``[0, 1], [1, 2], [2, 3]...``."""

    name = "OverlappingGroupsArrays"
    description = "SyntheticArrays whose partition groups overlap"

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]]:
        chosen = list(indices)
        return [chosen[k : k + 2] for k in range(0, len(chosen) - 1)]


class PairedArrays(SyntheticArrays):
    """Consecutive indices in pairs, in ascending order: ``[0, 1], [2, 3], ...``."""

    name = "PairedArrays"
    description = "SyntheticArrays read in ascending pairs"

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]]:
        chosen = sorted(indices)
        return [chosen[k : k + 2] for k in range(0, len(chosen), 2)]


class ReversedPairsNpz(NpzPerIndex):
    """Pairs like :class:`PairedArrays` but in descending order: ``[1, 0], [3, 2], ...``.

    With :class:`PairedArrays` as the source, the two sides demand opposite orders.
    """

    name = "ReversedPairsNpz"
    description = "NpzPerIndex written in descending pairs"

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]]:
        chosen = sorted(indices)
        return [list(reversed(chosen[k : k + 2])) for k in range(0, len(chosen), 2)]


class ForeignIndexArrays(SyntheticArrays):
    """Its partition always names index ``count - 1``, even when the run does not include it."""

    name = "ForeignIndexArrays"
    description = "SyntheticArrays whose partition names an index outside the run"

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]]:
        return [[*indices, self.count - 1]] if self.count - 1 not in indices else [list(indices)]


class HalfWrittenSource(Source[dict[str, Any]]):
    """Abstract: declares no ``__getitem__`` (a component someone forgot to finish)."""

    name = "HalfWrittenSource"
    description = "A source missing __getitem__"

    def __len__(self) -> int:
        return 1


class NotAComponent:
    """A plain class that happens to live next to components."""

    name = "NotAComponent"

    def __iter__(self) -> Iterator[int]:
        return iter(())
