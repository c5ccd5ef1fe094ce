"""Partitions: the groups of indices a source or a sink needs run together, in order.

:func:`intersect_partitions` and :func:`merge_partitions` combine the source's and the
sink's groups into the finest groups that honour both; a contradiction is one
:class:`PartitionConflictError` line.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from curator_worker.errors import PartitionConflictError


def _check_side(
    name: str, groups: Sequence[Sequence[int]], allowed: set[int] | None
) -> None:
    seen: set[int] = set()
    for group in groups:
        for i in group:
            if i in seen:
                raise PartitionConflictError(
                    f"The {name} partition puts index {i} in two groups; each index "
                    "must be in exactly one group."
                )
            if allowed is not None and i not in allowed:
                raise PartitionConflictError(
                    f"The {name} partition names index {i}, which is not in this run."
                )
            seen.add(i)


def intersect_partitions(
    source_groups: Sequence[Sequence[int]] | None,
    sink_groups: Sequence[Sequence[int]] | None,
) -> list[list[int]] | None:
    """Combine the source's and the sink's partitions, as physicsnemo-curator defines it.

    Each side's groups are indices that must run in one worker. The result groups indices
    by their (source group, sink group) pair, smallest index first, each group sorted; an
    index named by one side only goes with its group there. If that splits any group of
    either side, the two sides disagree.

    Parameters
    ----------
    source_groups, sink_groups : list[list[int]] | None
        Each side's groups; ``None`` means that side sets no constraint.

    Returns
    -------
    list[list[int]] | None
        ``None`` when neither side constrains; one side's groups as given when only it
        does.

    Raises
    ------
    PartitionConflictError
        (a ``ValueError``) naming the group of one side that the other side splits.

    Examples
    --------
    >>> intersect_partitions(None, None) is None
    True
    >>> intersect_partitions([[3, 2], [0, 1]], [[0, 1], [2, 3]])
    [[0, 1], [2, 3]]
    """
    if source_groups is None:
        return None if sink_groups is None else [list(g) for g in sink_groups]
    if sink_groups is None:
        return [list(g) for g in source_groups]
    source_of = {i: k for k, group in enumerate(source_groups) for i in group}
    sink_of = {i: k for k, group in enumerate(sink_groups) for i in group}
    pairs: dict[tuple[int, int], list[int]] = {}
    for i in sorted(source_of.keys() | sink_of.keys()):
        pairs.setdefault((source_of.get(i, -1), sink_of.get(i, -1)), []).append(i)
    for side, groups, other, other_of in (("source", source_groups, "sink", sink_of),
                                          ("sink", sink_groups, "source", source_of)):
        for k, group in enumerate(groups):
            spans = {other_of.get(i, -1) for i in group}
            if len(spans) > 1:
                raise PartitionConflictError(
                    f"Incompatible partitions: the {side} requires indices {list(group)} to "
                    f"run together ({side} group {k}), but the {other} puts them in "
                    f"{len(spans)} different groups. Make the {other}'s groups (e.g. a "
                    f"sink's chunk size) line up with the {side}'s."
                )
    return sorted(pairs.values(), key=lambda g: g[0])


def merge_partitions(
    source_groups: Sequence[Sequence[int]] | None,
    sink_groups: Sequence[Sequence[int]] | None,
    *,
    indices: Sequence[int] | None = None,
) -> list[list[int]]:
    """The finest partition that keeps every source group and every sink group whole.

    How runs are planned here. Unlike :func:`intersect_partitions` (physicsnemo-curator's,
    which refuses groups that straddle each other), two groups that share an index are
    merged into one, so any source and sink partitions can run together. Within a merged
    group indices keep the order of ``indices`` (or of first appearance), and each side's
    groups must keep their own order inside it.

    Parameters
    ----------
    source_groups, sink_groups : list[list[int]] | None
        Each side's groups; ``None`` means every index is independent on that side.
    indices : Sequence[int], optional
        The run's indices; an index in no group is a group of its own.

    Returns
    -------
    list[list[int]]
        Groups ordered by their first index's position.

    Raises
    ------
    PartitionConflictError
        (a ``ValueError``) naming the conflict: an index in two groups of one side, an
        index outside the run, or an order one side requires that the other contradicts.

    Examples
    --------
    >>> merge_partitions([[0, 1], [2, 3]], [[1, 2]])
    [[0, 1, 2, 3]]
    """
    if source_groups is None and sink_groups is None:
        return [[i] for i in indices] if indices is not None else []
    allowed = set(indices) if indices is not None else None
    _check_side("source", source_groups or [], allowed)
    _check_side("sink", sink_groups or [], allowed)

    order: list[int] = list(indices) if indices is not None else []
    if indices is None:
        known: set[int] = set()
        for group in [*(source_groups or []), *(sink_groups or [])]:
            for i in group:
                if i not in known:
                    known.add(i)
                    order.append(i)
    position = {i: p for p, i in enumerate(order)}

    parent = {i: i for i in order}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in [*(source_groups or []), *(sink_groups or [])]:
        group = list(group)
        for a, b in zip(group, group[1:], strict=False):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra

    merged: dict[int, list[int]] = {}
    for i in order:
        merged.setdefault(find(i), []).append(i)

    # Inside a merged group each side's groups keep their own order; between them, the
    # run's order decides. A cycle means the two sides demand opposite orders.
    after: dict[int, set[int]] = {}
    for group in [*(source_groups or []), *(sink_groups or [])]:
        group = list(group)
        for a, b in zip(group, group[1:], strict=False):
            after.setdefault(a, set()).add(b)
    return [
        _ordered(members, after, position) if len(members) > 1 and after else members
        for members in merged.values()
    ]


def _ordered(members: list[int], after: dict[int, set[int]], position: dict[int, int]) -> list[int]:
    """Topological order of ``members`` under ``after`` edges, ties broken by run position."""
    incoming = {i: 0 for i in members}
    for i in members:
        for j in after.get(i, ()):
            incoming[j] += 1
    ready = [(position[i], i) for i in members if incoming[i] == 0]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(i)
        for j in after.get(i, ()):
            incoming[j] -= 1
            if incoming[j] == 0:
                heapq.heappush(ready, (position[j], j))
    if len(out) != len(members):
        stuck = sorted(i for i in members if incoming[i] > 0)
        raise PartitionConflictError(
            f"The source and sink partitions require opposite orders for indices {stuck}; "
            "make their groups agree on the order within each group."
        )
    return out
