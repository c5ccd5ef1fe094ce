"""Unit tests of run planning: partitions, batches and index selections."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from curator_worker.contract.indices import check_indices, parse_indices
from curator_worker.contract.partitions import intersect_partitions, merge_partitions
from curator_worker.contract.planning import (
    BATCHES_PER_WORKER,
    MAX_AUTO_BATCH_SIZE,
    Batch,
    auto_batch_size,
    balanced_batch_sizes,
    batch_groups,
    pack_groups,
    plan_balanced_batches,
    plan_batches,
    plan_sized_batches,
)
from curator_worker.errors import (
    IndexSelectionError,
    PartitionConflictError,
    PipelineError,
)


def _flatten(groups: list[list[int]]) -> list[int]:
    return [i for g in groups for i in g]


# --------------------------------------------------------------------------- merge_partitions


def test_both_sides_none_gives_singletons_in_run_order() -> None:
    assert merge_partitions(None, None, indices=[3, 1, 2]) == [[3], [1], [2]]
    assert merge_partitions(None, None) == []


def test_source_only_keeps_groups_and_fills_singletons() -> None:
    assert merge_partitions([[0, 1], [4, 5]], None, indices=range(6)) == [
        [0, 1], [2], [3], [4, 5],
    ]


def test_sink_only_keeps_groups() -> None:
    assert merge_partitions(None, [[2, 3]], indices=[0, 1, 2, 3]) == [[0], [1], [2, 3]]


def test_overlapping_groups_are_merged() -> None:
    assert merge_partitions([[0, 1], [2, 3]], [[1, 2]]) == [[0, 1, 2, 3]]
    assert merge_partitions(
        [[0, 1], [2, 3], [4, 5], [6, 7]], [[0, 1, 2], [3, 4, 5], [6, 7]], indices=range(8)
    ) == [[0, 1, 2, 3, 4, 5], [6, 7]]


def test_merging_is_transitive_across_a_chain() -> None:
    source = [[0, 1], [2, 3], [4, 5]]
    sink = [[1, 2], [3, 4]]
    assert merge_partitions(source, sink, indices=range(7)) == [[0, 1, 2, 3, 4, 5], [6]]


def test_disjoint_sides_stay_separate() -> None:
    assert merge_partitions([[0, 1]], [[2, 3]], indices=range(5)) == [[0, 1], [2, 3], [4]]


def test_result_is_a_partition_of_the_run() -> None:
    indices = list(range(30))
    source = [indices[k:k + 4] for k in range(0, 30, 4)]
    sink = [indices[k:k + 7] for k in range(0, 30, 7)]
    groups = merge_partitions(source, sink, indices=indices)
    assert sorted(_flatten(groups)) == indices
    for g in [*source, *sink]:
        owners = {n for n, merged in enumerate(groups) for i in g if i in merged}
        assert len(owners) == 1, f"group {g} was split"


def test_groups_ordered_by_run_position() -> None:
    indices = [5, 4, 3, 2, 1, 0]
    groups = merge_partitions([[4, 3]], None, indices=indices)
    assert groups == [[5], [4, 3], [2], [1], [0]]


def test_index_in_two_groups_of_one_side_is_a_conflict() -> None:
    with pytest.raises(PartitionConflictError, match="source.*index 1"):
        merge_partitions([[0, 1], [1, 2]], None, indices=range(3))
    with pytest.raises(PartitionConflictError, match="sink.*index 2"):
        merge_partitions(None, [[2], [2, 3]], indices=range(4))


def test_partition_conflict_error_is_a_value_error() -> None:
    assert issubclass(PartitionConflictError, ValueError)
    assert issubclass(PartitionConflictError, PipelineError)
    with pytest.raises(ValueError):
        merge_partitions([[0, 1], [1]], None, indices=range(2))


def test_index_outside_the_run_is_a_conflict() -> None:
    with pytest.raises(PartitionConflictError, match="source.*index 9.*not in this run"):
        merge_partitions([[0, 9]], None, indices=[0, 1])
    with pytest.raises(PartitionConflictError, match="sink.*index 7"):
        merge_partitions(None, [[7]], indices=[0, 1])


def test_opposite_orders_on_the_two_sides_are_a_conflict() -> None:
    with pytest.raises(PartitionConflictError, match="opposite orders"):
        merge_partitions([[0, 1]], [[1, 0]], indices=[0, 1])
    # a cycle through a merged group
    with pytest.raises(PartitionConflictError, match="opposite orders"):
        merge_partitions([[0, 1], [2, 3]], [[1, 2], [3, 0]], indices=range(4))


def test_sink_order_different_from_run_order_is_not_a_conflict() -> None:
    # The run order is 0,1,2,3 but the sink wants its group written 3 then 2.
    groups = merge_partitions(None, [[3, 2]], indices=[0, 1, 2, 3])
    assert groups == [[0], [1], [3, 2]]
    groups = merge_partitions([[0, 1]], [[2, 1]], indices=[0, 1, 2])
    # source demands 0 before 1, sink demands 2 before 1: 0 and 2 are free -> run order
    assert groups == [[0, 2, 1]]


def test_each_side_order_is_respected_inside_a_merged_group() -> None:
    source = [[3, 0], [1, 2]]
    sink = [[0, 1]]
    (group,) = merge_partitions(source, sink, indices=[0, 1, 2, 3])
    assert sorted(group) == [0, 1, 2, 3]
    for side in (*source, *sink):
        positions = [group.index(i) for i in side]
        assert positions == sorted(positions)


def test_agreeing_sides_are_fine() -> None:
    assert merge_partitions([[2, 1]], [[2, 1]], indices=[1, 2]) == [[2, 1]]


def test_without_indices_the_order_is_first_appearance() -> None:
    assert merge_partitions([[5, 6]], [[6, 7]]) == [[5, 6, 7]]
    assert merge_partitions([[9], [2, 3]], None) == [[9], [2, 3]]


# --------------------------------------------------------------------------- pack_groups


def test_batch_groups_greedy_packing() -> None:
    assert pack_groups([[0], [1, 2], [3], [4]], 2) == [[0], [1, 2], [3, 4]]
    assert pack_groups([[i] for i in range(7)], 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert pack_groups([[0, 1], [2], [3, 4, 5], [6]], 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_batch_groups_never_splits_a_group() -> None:
    groups = [[0, 1, 2], [3, 4], [5], [6, 7, 8, 9], [10]]
    for n in range(1, 12):
        batches = pack_groups(groups, n)
        assert _flatten(batches) == list(range(11))
        for g in groups:
            (owner,) = [b for b in batches if g[0] in b]
            start = owner.index(g[0])
            assert owner[start:start + len(g)] == g
        for b in batches:
            # a batch over n is exactly one oversized group
            assert len(b) <= n or b in groups


def test_group_larger_than_n_is_a_batch_of_its_own() -> None:
    assert pack_groups([[0], [1, 2, 3, 4], [5]], 2) == [[0], [1, 2, 3, 4], [5]]
    assert pack_groups([[0, 1, 2, 3, 4]], 1) == [[0, 1, 2, 3, 4]]


def test_batch_groups_empty_and_does_not_alias_input() -> None:
    assert pack_groups([], 3) == []
    groups = [[0, 1]]
    batches = pack_groups(groups, 5)
    batches[0].append(99)
    assert groups == [[0, 1]]


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", None, True], ids=repr)
def test_batch_groups_rejects_bad_n(n: Any) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        pack_groups([[0]], n)


# --------------------------------------------------------------------------- parse_indices


@pytest.mark.parametrize(
    ("text", "length", "expected"),
    [
        ("0-99,200", 201, [*range(100), 200]),
        ("0-2,7", 10, [0, 1, 2, 7]),
        ("5", 6, [5]),
        ("3-3", 4, [3]),
        (" 4 , 0 - 1 ", 5, [4, 0, 1]),
        ("9,1,5", 10, [9, 1, 5]),
    ],
    ids=["range-and-single", "docstring", "single", "one-range", "spaces", "order-kept"],
)
def test_parse_indices_valid(text: str, length: int, expected: list[int]) -> None:
    assert parse_indices(text, length) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("5-2", "end is before the start.*'2-5'"),
        ("x", "Bad index 'x'"),
        ("1-x", "Bad index"),
        ("-1", "Bad index"),
        ("1-2-3", "Bad index"),
        ("1.5", "Bad index"),
        ("", "Empty index list"),
        ("   ", "Empty index list"),
        ("1,,2", "Empty item"),
        ("1,", "Empty item"),
        ("10", "out of range"),
        ("0-10", "out of range"),
        ("8-12", "out of range"),
        ("1,1", "twice"),
        ("0-3,2", "twice"),
        ("0-3,2-5", "twice"),
    ],
    ids=[
        "reversed", "letter", "bad-end", "negative", "two-dashes", "float", "empty", "blank",
        "double-comma", "trailing-comma", "past-end", "range-past-end", "range-straddles",
        "dup", "dup-in-range", "overlapping-ranges",
    ],
)
def test_parse_indices_errors(text: str, match: str) -> None:
    with pytest.raises(IndexSelectionError, match=match):
        parse_indices(text, 10)


def test_parse_indices_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_indices("x", 10)


def test_parse_indices_huge_range_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(IndexSelectionError, match="out of range"):
        parse_indices("0-99999999999999", 100)
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------- check_indices


def test_check_indices_returns_plain_ints_in_order() -> None:
    out = check_indices([np.int64(3), 0, np.int32(2)], 4)
    assert out == [3, 0, 2]
    assert all(type(i) is int for i in out)
    assert check_indices(np.arange(3), 3) == [0, 1, 2]
    assert check_indices(range(2), 2) == [0, 1]


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        ([], "No indices"),
        ([4], "out of range"),
        ([-1], "out of range"),
        ([0, 2, 0], "twice"),
        ([1.0], "not an integer"),
        ([1.7], "not an integer"),
        (["1"], "not an integer"),
        ([None], "not an integer"),
        ([True], "not an integer"),
        ([np.bool_(False)], "not an integer"),
        ([0, 1, True], "not an integer"),
    ],
    ids=["empty", "past-end", "negative", "dup", "float", "fraction", "str", "none", "bool",
         "np-bool", "ints-and-a-bool"],
)
def test_check_indices_errors(indices: list[Any], match: str) -> None:
    with pytest.raises(IndexSelectionError, match=match):
        check_indices(indices, 4)


# --------------------------------------------------------------------------- auto_batch_size / plan


@pytest.mark.parametrize(
    ("n_indices", "n_workers", "expected"),
    [
        (0, 4, 1),
        (1, 4, 1),
        (100, 1, 25),
        (101, 1, 26),
        (100, 5, 5),
        (10_000, 4, 625),
        (10**9, 4, MAX_AUTO_BATCH_SIZE),
        (100, 0, 25),
        (100, -3, 25),
    ],
    ids=str,
)
def test_auto_batch_size(n_indices: int, n_workers: int, expected: int) -> None:
    assert auto_batch_size(n_indices, n_workers) == expected


def test_auto_batch_size_gives_about_batches_per_worker() -> None:
    for workers in (1, 3, 8):
        size = auto_batch_size(1000, workers)
        n_batches = len(pack_groups([[i] for i in range(1000)], size))
        assert n_batches <= BATCHES_PER_WORKER * workers
        assert n_batches >= BATCHES_PER_WORKER * workers - 1


@pytest.mark.parametrize("workers", [1, 2, 3, 8, 14])
@pytest.mark.parametrize("n", [0, 1, 5, 17, 200, 400, 5000, 123_457])
def test_balanced_sizes_cover_every_index_in_shrinking_rounds(n: int, workers: int) -> None:
    sizes = balanced_batch_sizes(n, workers)
    assert sum(sizes) == n and all(s > 0 for s in sizes)
    assert all(s <= MAX_AUTO_BATCH_SIZE for s in sizes)
    assert sizes == sorted(sizes, reverse=True) or max(sizes) - min(sizes) <= 1 or \
        all(a >= b - 1 for a, b in zip(sizes, sizes[1:], strict=False))
    if n >= 8 * workers:
        # the tail: the last round's batches hold at most an eighth of a worker's share
        assert sizes[-1] <= max(1, -(-n // (8 * workers)))


def _finish_time(sizes: list[int], workers: int, cost) -> float:
    """When the last of ``workers`` greedy consumers of a FIFO queue of batches finishes."""
    free = [0.0] * workers
    start = 0
    for size in sizes:
        k = free.index(min(free))
        free[k] += sum(cost(i) for i in range(start, start + size))
        start += size
    return max(free)


def test_balanced_sizes_keep_workers_busy_to_the_end() -> None:
    n, workers = 4000, 4
    ideal = n / workers
    # equal costs: every round divides evenly, no core waits
    assert _finish_time(balanced_batch_sizes(n, workers), workers, lambda i: 1.0) == ideal
    # a hot spot among the last indices: it lands in one big batch with uniform sizes, in
    # smaller ones (spread over more workers) with shrinking rounds
    def cost(i: int) -> float:
        return 10.0 if i >= 3800 else 1.0
    size = auto_batch_size(n, workers)
    uniform_time = _finish_time([size] * (n // size), workers, cost)
    balanced_time = _finish_time(balanced_batch_sizes(n, workers), workers, cost)
    assert balanced_time < 0.8 * uniform_time


@pytest.mark.parametrize(
    ("n", "workers", "index_seconds", "expected"),
    [
        (5000, 2, 5e-6, [2500, 2500]),  # microsecond indices: one batch per worker
        (400, 2, 0.02, [100, 100, 50, 50, 25, 25, 25, 25]),  # slow ones: four rounds
        (400, 2, None, [100, 100, 50, 50, 25, 25, 25, 25]),  # unknown cost: four rounds
        (400, 2, 0.0016, [100, 100, 50, 50, 25, 25, 25, 25]),  # smallest batch 40 ms: fine
        (400, 2, 0.0006, [100, 100, 50, 50, 50, 50]),  # it would be 15 ms: three rounds
        (400, 2, 0.0003, [100, 100, 100, 100]),  # 7.5 ms, then 15 ms: two rounds
        (3, 4, 1e-6, [1, 1, 1]),
    ],
    ids=str,
)
def test_a_known_cost_per_index_coarsens_cheap_batches(
    n: int, workers: int, index_seconds: float | None, expected: list[int]
) -> None:
    sizes = balanced_batch_sizes(n, workers, index_seconds=index_seconds)
    assert sizes == expected and sum(sizes) == n


@pytest.mark.parametrize(
    ("spread", "expected"),
    [
        (None, [100, 100, 50, 50, 25, 25, 25, 25]),  # one batch timed: no spread known
        (0.3, [100, 100, 50, 50, 25, 25, 25, 25]),  # uneven: the tail rounds stay
        (0.05, [100, 100, 100, 100]),  # uniform: two rounds
        (0.0, [100, 100, 100, 100]),
    ],
    ids=str,
)
def test_uniform_costs_get_two_rounds(spread: float | None, expected: list[int]) -> None:
    assert balanced_batch_sizes(400, 2, index_seconds=0.02, spread=spread) == expected
    # cheap and uniform: still down to one batch per worker
    assert balanced_batch_sizes(5000, 2, index_seconds=5e-6, spread=0.0) == [2500, 2500]
    # a spread without a cost changes nothing (unknown cost: count-based rounds)
    assert balanced_batch_sizes(400, 2, spread=0.0) == balanced_batch_sizes(400, 2)


def test_two_rounds_of_uniform_costs_still_finish_together() -> None:
    """Equal-cost indices: the coarser plan ends when the four-round plan does."""
    n, workers, cost = 1000, 7, 1.0
    uniform = balanced_batch_sizes(n, workers, index_seconds=cost, spread=0.0)
    assert len(uniform) == 2 * workers
    assert _finish_time(uniform, workers, lambda _: cost) <= _finish_time(
        balanced_batch_sizes(n, workers), workers, lambda _: cost) + cost


def test_known_slow_indices_keep_batches_under_a_time_limit() -> None:
    """Batches that would outlive the broker's visibility timeout are cut smaller."""
    sizes = balanced_batch_sizes(100_000, 8, index_seconds=10.0, max_batch_seconds=1200)
    assert max(sizes) <= 121 and sum(sizes) == 100_000
    assert balanced_batch_sizes(100_000, 8, index_seconds=10.0)[0] == MAX_AUTO_BATCH_SIZE
    # cheap indices: the limit does not bind
    cheap = balanced_batch_sizes(100_000, 8, index_seconds=1e-5, max_batch_seconds=1200)
    assert cheap == balanced_batch_sizes(100_000, 8, index_seconds=1e-5)
    # an index slower than the limit: one index per batch
    assert set(balanced_batch_sizes(50, 2, index_seconds=5000.0, max_batch_seconds=1200)) \
        == {1}


def test_a_known_cost_allows_bigger_batches_but_bounded() -> None:
    sizes = balanced_batch_sizes(10**6, 8, index_seconds=3e-6)
    assert max(sizes) == 10_000 and sum(sizes) == 10**6
    assert balanced_batch_sizes(10**6, 8, index_seconds=0.5)[0] == MAX_AUTO_BATCH_SIZE


def test_plan_balanced_and_sized_batches_keep_order_and_groups() -> None:
    batches = plan_balanced_batches(list(range(400)), 2)
    assert [len(b.indices) for b in batches] == balanced_batch_sizes(400, 2)
    assert [i for b in batches for i in b.indices] == list(range(400))
    assert [b.key for b in batches] == [f"b{n:06d}" for n in range(len(batches))]
    groups = [[0, 1, 2], [3], [4, 5], [6], [7, 8, 9, 10], [11]]
    sized = plan_sized_batches(groups, [4, 2, 2])
    assert [b.indices for b in sized] == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
    assert plan_sized_batches([], [3]) == []


def test_plan_batches_keys_are_deterministic() -> None:
    groups = [[0], [1, 2], [3], [4], [5, 6, 7], [8]]
    first = plan_batches(groups, 2)
    second = plan_batches([list(g) for g in groups], 2)
    assert first == second
    assert [b.key for b in first] == [f"b{n:06d}" for n in range(len(first))]
    assert [b.indices for b in first] == pack_groups(groups, 2)
    assert all(isinstance(b, Batch) for b in first)
    assert plan_batches([], 3) == []
    with pytest.raises(ValueError):
        plan_batches(groups, 0)


def test_batch_is_frozen() -> None:
    batch = Batch(key="b000000", indices=[1])
    with pytest.raises(AttributeError):
        batch.key = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- physicsnemo-curator's
# intersect_partitions and batch_groups (refuse straddling groups; pack into n workers)


def test_intersect_partitions_none_when_neither_side_constrains() -> None:
    assert intersect_partitions(None, None) is None


def test_intersect_partitions_one_side_is_returned_as_given() -> None:
    assert intersect_partitions([[4, 5], [0, 1]], None) == [[4, 5], [0, 1]]
    assert intersect_partitions(None, [[2], [1, 0]]) == [[2], [1, 0]]


def test_intersect_partitions_agreeing_sides_give_sorted_groups() -> None:
    source = [[9, 7], [2, 1, 3]]
    assert intersect_partitions(source, [[3, 2, 1], [7, 9]]) == [[1, 2, 3], [7, 9]]
    # an index only one side names goes with its group on that side
    assert intersect_partitions([[0, 1], [8]], [[1, 0]]) == [[0, 1], [8]]


@pytest.mark.parametrize(
    ("source", "sink", "side"),
    [([[0, 1, 2, 3]], [[0, 1], [2, 3]], "source"),
     ([[0, 1], [2, 3]], [[0, 1, 2, 3]], "sink"),
     ([[i] for i in range(6)], [[0, 1, 2], [3, 4, 5]], "sink")],
)
def test_intersect_partitions_refuses_a_group_the_other_side_splits(
    source: list[list[int]], sink: list[list[int]], side: str
) -> None:
    with pytest.raises(PartitionConflictError, match=f"the {side} requires indices") as info:
        intersect_partitions(source, sink)
    assert isinstance(info.value, ValueError)


def test_batch_groups_makes_at_most_n_balanced_batches() -> None:
    sizes = sorted(len(b) for b in batch_groups([[i] for i in range(10)], 3))
    assert sizes == [3, 3, 4]
    big_first = batch_groups([[0, 1, 2, 3, 4], [5], [6], [7], [8], [9]], 2)
    assert sorted(map(len, big_first)) == [5, 5]
    assert batch_groups([[0, 1], [2]], 5) == [[0, 1], [2]]  # no more groups than workers


def test_batch_groups_keeps_every_group_whole_and_in_order() -> None:
    groups = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9], [10]]
    batches = batch_groups(groups, 2)
    assert len(batches) == 2 and sorted(_flatten(batches)) == list(range(11))
    for group in groups:
        (home,) = [b for b in batches if group[0] in b]
        start = home.index(group[0])
        assert home[start:start + len(group)] == group
    for batch in batches:
        assert batch == sorted(batch)


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_batch_groups_rejects_bad_worker_counts(n: Any) -> None:
    with pytest.raises(ValueError, match="n_workers"):
        batch_groups([[0], [1]], n)


def test_celery_batches_are_still_cut_by_size() -> None:
    assert [b.indices for b in plan_batches([[i] for i in range(10)], 4)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
