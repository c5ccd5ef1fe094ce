"""Starting and committing a batch attempt against a real Redis: the plan check, the first
delivery's liveness mark and its release ride on the begin and commit round trips."""

from __future__ import annotations

import time

import pytest

from curator_worker.outcome import IndexResult
from curator_worker.store import COMMITTED_LAST, JobStore
from curator_worker.store.attempts import UnplannedBatch
from curator_worker.store.batch_results import encode
from curator_worker.store.keys import alive_key, plan_entry

pytestmark = pytest.mark.integration


@pytest.fixture()
def job_store(redis_server) -> JobStore:
    return JobStore.from_url(redis_server.url)


def _job(store: JobStore, job_id: str) -> None:
    store.create_job(job_id, {"version": 1}, {}, [("b000000", [0, 1]), ("b000001", [2])],
                     total=3, queue="q")


@pytest.mark.parametrize("key, indices", [
    ("b000000", [0, 2]),      # other indices
    ("b000000", ["0", "1"]),  # same numbers, other type
    ("b000000", [1, 0]),      # other order
    ("b000009", [0, 1]),      # no such batch
])
def test_an_unplanned_batch_writes_nothing(job_store: JobStore, key: str, indices: list) -> None:
    job = f"attempt-unplanned-{key}-{len(str(indices))}"
    _job(job_store, job)
    mark = job_store.attempt_mark(job, key)
    with pytest.raises(UnplannedBatch):
        job_store.begin_batch(job, key, "node/1", plan=plan_entry(indices), mark=mark)
    assert job_store.client.hgetall(job_store.key(job, "attempts")) == {}
    assert job_store.client.hget(job_store.key(job), "started") is None
    assert job_store.client.get(alive_key(job, key)) is None
    with pytest.raises(UnplannedBatch):  # a job that does not exist
        job_store.begin_batch("no-such-job", "b000000", plan=plan_entry([0, 1]))


def test_the_first_delivery_is_marked_at_begin_and_the_commit_releases_it(
        job_store: JobStore) -> None:
    job = "attempt-mark-first"
    _job(job_store, job)
    with job_store.attempt_mark(job, "b000000", ttl=0.6) as mark:
        start = job_store.begin_batch(job, "b000000", "node/1", plan=plan_entry([0, 1]),
                                      mark=mark)
        assert start is not None and (start.attempt, start.marked) == (1, True)
        assert job_store.client.get(alive_key(job, "b000000")) == mark.value.encode()
        mark.keep_alive()
        time.sleep(1.2)  # two time-to-lives: only renewals keep it
        assert job_store.client.get(alive_key(job, "b000000")) == mark.value.encode()
        # a redelivery now finds its live attempt, and is not marked by the store
        other = job_store.attempt_mark(job, "b000000", ttl=0.6)
        again = job_store.begin_batch(job, "b000000", plan=plan_entry([0, 1]), mark=other)
        assert again is not None and (again.attempt, again.marked) == (2, False)
        assert job_store.client.get(alive_key(job, "b000000")) == mark.value.encode()
        mark.stop_renewing()
        job_store.commit_batch(job, "b000000", encode([IndexResult(0, ["/a"]),
                                                       IndexResult(1, ["/b"])]), {}, mark=mark)
        assert mark.released
        assert job_store.client.get(alive_key(job, "b000000")) is None
    time.sleep(0.5)  # no renewal brings it back
    assert job_store.client.get(alive_key(job, "b000000")) is None


def test_a_commit_leaves_another_attempts_mark_alone(job_store: JobStore) -> None:
    job = "attempt-mark-other"
    _job(job_store, job)
    job_store.client.set(alive_key(job, "b000001"), "other-host/7/abc", px=5000)
    with job_store.attempt_mark(job, "b000001") as mine:
        assert job_store.commit_batch(job, "b000001", encode([IndexResult(2, ["/c"])]), {},
                                      mark=mine) != COMMITTED_LAST
    assert job_store.client.get(alive_key(job, "b000001")) == b"other-host/7/abc"


def test_a_mark_not_released_by_a_commit_is_released_at_the_end(job_store: JobStore) -> None:
    job = "attempt-mark-uncommitted"
    _job(job_store, job)
    with job_store.attempt_mark(job, "b000000") as mark:
        start = job_store.begin_batch(job, "b000000", plan=plan_entry([0, 1]), mark=mark)
        assert start is not None and start.marked
        mark.keep_alive()
    assert job_store.client.get(alive_key(job, "b000000")) is None
