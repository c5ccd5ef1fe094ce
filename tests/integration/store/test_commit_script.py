"""The commit script against a real Redis: a batch's results, shards and counters change
together, once, and retry rounds move indices from failed to done."""

from __future__ import annotations

import time

import pytest

from curator_worker.outcome import IndexResult, error_record
from curator_worker.store import ALREADY_COMMITTED, COMMITTED, COMMITTED_LAST, Job, JobStore
from curator_worker.store.batch_results import encode

pytestmark = pytest.mark.integration


@pytest.fixture()
def job_store(redis_server) -> JobStore:
    return JobStore.from_url(redis_server.url)


def _new_job(store: JobStore, job_id: str, batches: list[tuple[str, list[int]]]) -> None:
    total = sum(len(ix) for _, ix in batches)
    store.create_job(job_id, {"version": 1}, {}, batches, total=total, queue="q")


def _ok(i: int, attempt: int = 1) -> IndexResult:
    return IndexResult(i, paths=[f"/out/{i}"], seconds=0.01, attempt=attempt)


def _err(i: int, attempt: int = 1) -> IndexResult:
    return IndexResult(i, error=error_record(RuntimeError(f"boom {i}"), attempt), attempt=attempt)


def test_commit_counts_once_and_a_second_commit_is_refused(job_store: JobStore) -> None:
    job = "unit-commit-once"
    _new_job(job_store, job, [("b000000", [0, 1, 2])])
    results = encode([_ok(0), _err(1), _ok(2)])
    assert job_store.commit_batch(job, "b000000", results, {"shards": {}}) == COMMITTED_LAST
    assert job_store.commit_batch(job, "b000000", results, {"shards": {}}) == ALREADY_COMMITTED
    status = job_store.status(job)
    assert (status.done, status.failed, status.committed_batches) == (2, 1, 1)
    assert job_store.paths(job, [2, 1, 0]) == [["/out/2"], None, ["/out/0"]]
    assert list(job_store.failures(job)) == [1]


def test_retry_rounds_move_indices_from_failed_to_done(job_store: JobStore) -> None:
    job = "unit-commit-retry"
    _new_job(job_store, job, [("b000000", [0, 1, 2, 3]), ("b000001", [4])])
    assert job_store.commit_batch(
        job, "b000000", encode([_ok(0), _err(1), _err(2), _err(3)]), {}) == COMMITTED
    assert job_store.commit_batch(job, "b000001", encode([_ok(4)]), {}) == COMMITTED_LAST
    job_store.add_batches(job, [("r1-b000000", [1, 2, 3])])
    job_store.commit_batch(job, "r1-b000000", encode([_ok(1), _err(2), _err(3)]), {})
    status = job_store.status(job)
    assert (status.done, status.failed) == (3, 2)
    job_store.add_batches(job, [("r2-b000000", [2, 3])])
    job_store.commit_batch(job, "r2-b000000", encode([_err(2, 3), _ok(3)]), {})
    status = job_store.status(job)
    assert (status.done, status.failed) == (4, 1)
    assert sorted(job_store.failures(job)) == [2]
    records = job_store.results(job, [0, 1, 2, 3])
    assert [("error" in r) for r in records] == [False, False, True, False]
    assert records[2]["attempt"] == 3, "the latest round's error is kept"
    # the fast path (consecutive indices: slices) and the map path agree with the records
    expected = [["/out/0"], ["/out/1"], None, ["/out/3"], ["/out/4"]]
    assert job_store.paths(job, range(5)) == expected
    assert job_store.paths(job, [0, 1, 2, 3, 4]) == expected
    assert job_store.paths(job, [1, 2, 3]) == expected[1:4]  # a window of the batches
    assert job_store.paths(job, [4, 0]) == [expected[4], expected[0]]
    assert job_store.paths(job, []) == []
    metrics = Job(job, job_store).metrics()
    assert [(m["index"], m["batch"]) for m in metrics] == [
        (0, "b000000"), (1, "r1-b000000"), (2, "r2-b000000"), (3, "r2-b000000"),
        (4, "b000001")]


def test_retry_round_ten_sorts_after_round_nine(job_store: JobStore) -> None:
    job = "unit-commit-round10"
    _new_job(job_store, job, [("b000000", [0])])
    job_store.commit_batch(job, "b000000", encode([_err(0)]), {})
    for round_number in range(1, 11):
        key = f"r{round_number}-b000000"
        job_store.add_batches(job, [(key, [0])])
        job_store.commit_batch(job, key, encode([_err(0, attempt=round_number + 1)]), {})
    assert job_store.results(job, [0])[0]["attempt"] == 11
    assert job_store.status(job).failed == 1


def test_only_one_gather_holds_the_lock_and_a_dead_holders_lock_expires(
    job_store: JobStore,
) -> None:
    job = "unit-gather-lock"
    with job_store.gather_lease(job, ttl=0.6) as first:
        assert first is not None
        with job_store.gather_lease(job) as second:
            assert second is None
        time.sleep(0.5)  # renewed every 0.2 s: still held past its first ttl
        with job_store.gather_lease(job) as third:
            assert third is None
    with job_store.gather_lease(job) as after_release:
        assert after_release is not None
    # a holder that died: the key is left behind, without renewal it expires
    job_store.client.set(job_store.key(job, "gathering"), "dead-holder", px=300)
    with job_store.gather_lease(job) as while_dead:
        assert while_dead is None
    time.sleep(0.4)
    with job_store.gather_lease(job) as after_expiry:
        assert after_expiry is not None
