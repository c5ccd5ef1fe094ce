"""Planning a run: index selections, partition groups and batches.

Every backend shares this: the indices of a run are grouped so that the source's and the
sink's partitions are honoured (a group is never split and runs in order), then groups are
packed into batches, the unit of work and of atomicity.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from curator_worker.errors import IndexSelectionError, PartitionConflictError

#: Batches a job is cut into per worker process when the batch size is automatic: enough
#: for the last batches not to leave cores idle, few enough to keep per-task overhead low.
BATCHES_PER_WORKER = 4
#: Automatic batches come in rounds of one batch per worker process holding these shares
#: of the indices, in queue order: later rounds are smaller, so when index costs vary the
#: cores left idle at the end wait for at most an eighth of a worker's share.
TAIL_ROUND_SHARES = (0.5, 0.25, 0.125, 0.125)
#: Fewer rounds, used when the indices are known to be so cheap that the smallest batches of
#: :data:`TAIL_ROUND_SHARES` would take less than :data:`MIN_BATCH_SECONDS`.
COARSER_ROUND_SHARES = ((0.5, 0.25, 0.25), (0.5, 0.5), (1.0,))
#: Least work (seconds) an automatic batch is cut to when the cost per index is known:
#: each batch costs a few milliseconds of Celery and broker bookkeeping.
MIN_BATCH_SECONDS = 0.02
#: Relative spread of the previous run's per-batch seconds per index at or under which its
#: costs count as uniform: those jobs get :data:`UNIFORM_ROUND_SHARES` (two rounds), since
#: each round boundary makes every process wait on its node's main process (acks, hand-off)
#: and uniform costs leave no tail to balance.
UNIFORM_SPREAD = 0.05
UNIFORM_ROUND_SHARES = (0.5, 0.5)
#: Upper bound of an automatic batch size when the cost per index is known (messages stay
#: below ~100 KB).
MAX_KNOWN_COST_BATCH_SIZE = 10_000
#: Upper bound of an automatic batch size, so progress stays visible on huge jobs.
MAX_AUTO_BATCH_SIZE = 1000


class IndexCost(NamedTuple):
    """What the previous finished job of a spec measured about its indices.

    Attributes
    ----------
    seconds : float
        Wall seconds per index (batch wall time over its indices, overhead included).
    spread : float or None
        Relative standard deviation of its batches' seconds per index (weighted by their
        indices); None when it had fewer than two timed batches.
    """

    seconds: float
    spread: float | None = None


def parse_indices(text: str, length: int) -> list[int]:
    """Parse an index selection such as ``"0-99,200"`` (ranges inclusive).

    Parameters
    ----------
    text : str
        Comma-separated indices and ``a-b`` ranges.
    length : int
        Number of indices of the pipeline; every index must be below it.

    Returns
    -------
    list[int]
        The indices in the order given.

    Raises
    ------
    IndexSelectionError
        For malformed parts (``x``, ``5-2``), out-of-range indices and duplicates.

    Examples
    --------
    >>> parse_indices("0-2,7", 10)
    [0, 1, 2, 7]
    """
    indices: list[int] = []
    if not text or not text.strip():
        raise IndexSelectionError("Empty index list. Give indices like '0-99,200'.")
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise IndexSelectionError(
                f"Empty item in index list {text!r}. Separate indices with single commas."
            )
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise IndexSelectionError(
                f"Bad index {part!r} in {text!r}. Use non-negative integers and ranges like '0-99'."
            ) from None
        if hi < lo:
            raise IndexSelectionError(
                f"Bad range {part!r}: the end is before the start. Write it as '{hi}-{lo}'."
            )
        if length == 0:
            check_indices([], 0)  # raises: the source is empty
        if hi >= length:  # before expanding: a typo like '0-9999999999' must not eat memory
            raise IndexSelectionError(
                f"Index {hi} is out of range: the pipeline has {length} indices (0-{length - 1})."
            )
        indices.extend(range(lo, hi + 1))
    check_indices(indices, length)
    return indices


def ints_in_range(indices: Sequence[int], length: int) -> bool:
    """True when every index is a plain ``int`` in ``[0, length)`` (at C speed; repeats
    allowed). :func:`check_indices` names what is wrong otherwise."""
    return set(map(type, indices)) <= {int} and (
        len(indices) == 0 or (min(indices) >= 0 and max(indices) < length))


def check_indices(indices: Sequence[int], length: int) -> list[int]:
    """Validate a list of indices against a pipeline of ``length`` indices.

    Raises
    ------
    IndexSelectionError
        For an empty list, an out-of-range index or a duplicate.
    """
    if length == 0:
        raise IndexSelectionError(
            "No indices to run: the pipeline's source is empty (0 items). Check the "
            "source's params (its folder, pattern or count).")
    if len(indices) == 0:
        raise IndexSelectionError("No indices to run. Give at least one index.")
    if ints_in_range(indices, length):  # the common case, checked at C speed
        out = list(indices)
        if len(set(out)) == len(out):
            return out
    seen: set[int] = set()  # find and name the first bad index
    out: list[int] = []
    for i in indices:
        if isinstance(i, bool):
            raise IndexSelectionError(f"Index {i!r} is not an integer.")
        if not isinstance(i, int):
            try:
                i = operator.index(i)  # numpy integers; never truncate floats or parse strings
            except TypeError:
                raise IndexSelectionError(f"Index {i!r} is not an integer.") from None
        if not 0 <= i < length:
            raise IndexSelectionError(
                f"Index {i} is out of range: the pipeline has {length} indices (0-{length - 1})."
            )
        if i in seen:
            raise IndexSelectionError(f"Index {i} is selected twice. Give each index once.")
        seen.add(i)
        out.append(i)
    return out


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


def batch_groups(groups: Sequence[Sequence[int]], n_workers: int) -> list[list[int]]:
    """Pack groups into at most ``n_workers`` batches of balanced size, never splitting one.

    physicsnemo-curator's packing: with no more groups than workers, the groups are the
    batches; otherwise the largest groups go first, each to the batch holding the fewest
    indices so far. Within a batch, groups keep their original order.

    Raises
    ------
    ValueError
        If ``n_workers`` is not a positive integer.

    Examples
    --------
    >>> batch_groups([[0, 1, 2, 3], [4], [5], [6]], 2)
    [[0, 1, 2, 3], [4, 5, 6]]
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}.")
    if len(groups) <= n_workers:
        return [list(g) for g in groups]
    by_size = sorted(range(len(groups)), key=lambda k: -len(groups[k]))  # stable
    members: list[list[int]] = [[] for _ in range(n_workers)]
    heap = [(0, b) for b in range(n_workers)]
    for k in by_size:
        size, b = heapq.heappop(heap)
        members[b].append(k)
        heapq.heappush(heap, (size + len(groups[k]), b))
    batches = [[i for k in sorted(ks) for i in groups[k]] for ks in members if ks]
    batches.sort(key=lambda batch: batch[0] if batch else 0)
    return batches


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


def pack_groups(groups: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """Pack groups into batches of about ``n`` indices, never splitting a group.

    How batches of a given size are cut (``batch_size``); :func:`batch_groups` instead
    packs into a given number of batches.

    Groups are packed greedily in order, so consecutive indices stay together; a group
    larger than ``n`` is a batch of its own.

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer.

    Examples
    --------
    >>> pack_groups([[0], [1, 2], [3], [4]], 2)
    [[0], [1, 2], [3, 4]]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"Batch size must be a positive integer, got {n!r}.")
    batches: list[list[int]] = []
    current: list[int] = []
    for group in groups:
        if current and len(current) + len(group) > n:
            batches.append(current)
            current = []
        current.extend(group)
    if current:
        batches.append(current)
    return batches


def auto_batch_size(n_indices: int, n_workers: int) -> int:
    """A batch size giving about :data:`BATCHES_PER_WORKER` batches per worker process."""
    target = max(1, BATCHES_PER_WORKER * max(1, n_workers))
    return max(1, min(MAX_AUTO_BATCH_SIZE, math.ceil(n_indices / target)))


def balanced_batch_sizes(
    n_indices: int, n_workers: int, max_size: int = MAX_AUTO_BATCH_SIZE,
    index_seconds: float | None = None, spread: float | None = None,
    max_batch_seconds: float | None = None,
) -> list[int]:
    """Automatic batch sizes, in queue order: full batches, then shrinking tail rounds.

    Batches of ``max_size`` come first while more than two full rounds of indices are
    left; the rest is cut into :data:`TAIL_ROUND_SHARES` rounds of ``n_workers`` batches
    each (sizes within a round differ by at most one). Equal-cost indices keep every
    worker busy until the end; uneven ones leave the last workers waiting for at most one
    small batch.

    ``index_seconds``, the cost of an index when it is known (a previous run of the same
    spec), coarsens the plan for cheap indices: the rounds of :data:`COARSER_ROUND_SHARES`
    whose smallest batch still takes :data:`MIN_BATCH_SECONDS`, down to one batch per
    worker, and batches of up to :data:`MAX_KNOWN_COST_BATCH_SIZE` indices. ``spread``
    (that run's :attr:`IndexCost.spread`) at or under :data:`UNIFORM_SPREAD` means costs
    were uniform: then at most :data:`UNIFORM_ROUND_SHARES` rounds. With a known cost,
    ``max_batch_seconds`` caps the batch size too (a third of the visibility timeout: a
    batch still running when it expires is delivered again, and runs twice).

    Examples
    --------
    >>> balanced_batch_sizes(400, 2)
    [100, 100, 50, 50, 25, 25, 25, 25]
    >>> balanced_batch_sizes(400, 2, index_seconds=0.02, spread=0.01)
    [100, 100, 100, 100]
    >>> balanced_batch_sizes(5000, 2, index_seconds=5e-6)
    [2500, 2500]
    """
    workers = max(1, n_workers)
    remaining = max(0, n_indices)
    rounds = TAIL_ROUND_SHARES
    known = index_seconds is not None and index_seconds > 0
    if known:
        max_size = max(max_size, min(MAX_KNOWN_COST_BATCH_SIZE,
                                     int(MIN_BATCH_SECONDS * 50 / index_seconds)))
        if max_batch_seconds:
            max_size = min(max_size, max(1, int(max_batch_seconds / index_seconds)))
    sizes: list[int] = []
    while remaining > 2 * workers * max_size:
        sizes.append(max_size)
        remaining -= max_size
    if known:
        candidates = [TAIL_ROUND_SHARES, *COARSER_ROUND_SHARES]
        if spread is not None and spread <= UNIFORM_SPREAD:
            candidates = candidates[candidates.index(UNIFORM_ROUND_SHARES):]
        for shares in candidates:
            rounds = shares
            if remaining * min(shares) / workers * index_seconds >= MIN_BATCH_SECONDS:
                break
    cut = 0
    shares = 0.0
    for share in rounds:
        shares += share
        end = remaining if shares >= 1.0 else round(remaining * shares)
        per, extra = divmod(end - cut, workers)
        sizes += [per + 1] * extra + [per] * (workers - extra)
        cut = end
    return [size for size in sizes if size > 0]


@dataclass(frozen=True)
class Batch:
    """One unit of work: a deterministic key and the indices it runs, in order."""

    key: str
    indices: list[int]


def plan_batches(
    groups: Sequence[Sequence[int]], batch_size: int, prefix: str = "b"
) -> list[Batch]:
    """Batches with deterministic keys (``b000000``, ``b000001``, ...) from partition groups.

    ``prefix`` starts every key (a retry round uses ``r1-b`` and so on).
    """
    return [
        Batch(key=f"{prefix}{number:06d}", indices=indices)
        for number, indices in enumerate(pack_groups(groups, batch_size))
    ]


def plan_sized_batches(
    groups: Sequence[Sequence[int]], sizes: Sequence[int], prefix: str = "b"
) -> list[Batch]:
    """Batches of about ``sizes[k]`` indices each (groups packed in order, never split).

    A batch closes once it holds at least its target; indices left when ``sizes`` runs
    out go into batches of the last size.
    """
    batches: list[Batch] = []
    current: list[int] = []
    for group in groups:
        current.extend(group)
        target = sizes[min(len(batches), len(sizes) - 1)] if sizes else 1
        if len(current) >= target:
            batches.append(Batch(f"{prefix}{len(batches):06d}", current))
            current = []
    if current:
        batches.append(Batch(f"{prefix}{len(batches):06d}", current))
    return batches


def plan_balanced_batches(
    indices: Sequence[int], n_workers: int, index_seconds: float | None = None,
    spread: float | None = None, max_batch_seconds: float | None = None,
) -> list[Batch]:
    """Independent indices cut by :func:`balanced_batch_sizes` (slices: fast for 1M)."""
    batches = []
    start = 0
    sizes = balanced_batch_sizes(len(indices), n_workers, index_seconds=index_seconds,
                                 spread=spread, max_batch_seconds=max_batch_seconds)
    for number, size in enumerate(sizes):
        batches.append(Batch(f"b{number:06d}", list(indices[start : start + size])))
        start += size
    return batches


def plan_independent_batches(indices: Sequence[int], batch_size: int) -> list[Batch]:
    """:func:`plan_batches` for indices without partitions: plain slices (fast for 1M)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Batch size must be a positive integer, got {batch_size!r}.")
    return [
        Batch(key=f"b{number:06d}", indices=list(indices[start : start + batch_size]))
        for number, start in enumerate(range(0, len(indices), batch_size))
    ]
