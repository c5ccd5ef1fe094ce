"""Planning a run's batches, the unit of work and of atomicity.

Every backend shares this: the indices of a run (:mod:`.indices`) are grouped so that the
source's and the sink's partitions are honoured (:mod:`.partitions`: a group is never split
and runs in order), then groups are packed into batches here, sized by the workers and by
what the spec's previous job measured.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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
