"""The per-batch result blob and the commit script: what the job store keeps per index."""

from __future__ import annotations

import json
import time

import pytest

from curator_worker.batch import IndexResult, error_record, execute_batch
from curator_worker.batch_results import decode, decode_paths, encode
from curator_worker.jobs import ALREADY_COMMITTED, COMMITTED, COMMITTED_LAST, Job, JobStore
from curator_worker.pipeline import Pipeline, Sink, Source
from curator_worker.policy import BatchPolicy


class _Numbers(Source[int]):
    name = "Numbers"
    description = "i for index i (microseconds of work)"

    def __init__(self, count: int, slow: frozenset[int] = frozenset()) -> None:
        self.count, self.slow = count, slow

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if index in self.slow:
            time.sleep(0.11)
        yield index


class _Echo(Sink[int]):
    name = "Echo"
    description = "returns the items as strings"

    def __call__(self, items, index: int) -> list[str]:
        return [str(i) for i in items]


def _mixed_results() -> list[IndexResult]:
    failure = error_record(ValueError("bad item"), attempt=2, tries=3)
    return [
        IndexResult(7, paths=["/out/a.npz"], seconds=0.0012345, attempt=2,
                    finished=1764486000.1234),
        IndexResult(3, paths=[], seconds=0.5, attempt=2, tries=2,
                    stages={"source": 0.1, "sink": 0.3999999}, finished=1764486001.0),
        IndexResult(9, error=failure, seconds=0.25, attempt=2, tries=3),
        IndexResult(4, paths=["x", "y"], seconds=2.0, attempt=1, peak_mb=12.34567),
        IndexResult(5, paths=["z"], seconds=0.0),
    ]


def test_decode_of_encode_is_each_record_as_stored() -> None:
    results = _mixed_results()
    encoded = encode(results)
    assert decode(encoded.blob) == [r.as_record() for r in results]
    assert encoded.ok == [7, 3, 4, 5]
    assert set(encoded.failed) == {9}
    assert json.loads(encoded.failed[9])["error"]["message"] == "bad item"
    assert dict(decode_paths(encoded.blob)) == {7: ["/out/a.npz"], 3: [], 9: None,
                                                4: ["x", "y"], 5: ["z"]}


def test_consecutive_indices_are_stored_as_a_range() -> None:
    results = [IndexResult(i, paths=[f"/out/{i}"], seconds=0.001, finished=1764486000.0 + i)
               for i in range(10, 20)]
    encoded = encode(results)
    assert json.loads(encoded.blob)["index"] == {"start": 10, "count": 10}
    assert decode(encoded.blob) == [r.as_record() for r in results]
    assert [i for i, _ in decode_paths(encoded.blob)] == list(range(10, 20))
    assert json.loads(encode(results[::-1]).blob)["index"] == list(range(19, 9, -1))


def test_empty_paths_survive_the_round_trip() -> None:
    record = decode(encode([IndexResult(0, paths=[], seconds=0.1)]).blob)[0]
    assert record["paths"] == []


def test_a_blob_of_another_format_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="another format"):
        decode(json.dumps([{"index": 0, "paths": []}]))


def test_stage_timings_of_fast_indices_are_sampled() -> None:
    pipeline = Pipeline(_Numbers(64, slow=frozenset({40})), sink=_Echo())
    outcome = execute_batch(pipeline, list(range(64)), policy=BatchPolicy(), timings=True)
    timed = [r.index for r in outcome.results if r.stages]
    # Fast indices: one in 16 is timed; after a slow one (index 40), the next one is too.
    assert timed == [0, 16, 32, 41, 48]
    assert all(r.ok for r in outcome.results)
    assert set(outcome.results[41].stages or {}) == {"source", "sink"}


# ---------------------------------------------------------------------------- commit script


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
    with job_store.gather_lock(job, ttl=0.6) as first:
        assert first is True
        with job_store.gather_lock(job) as second:
            assert second is False
        time.sleep(0.5)  # renewed every 0.2 s: still held past its first ttl
        with job_store.gather_lock(job) as third:
            assert third is False
    with job_store.gather_lock(job) as after_release:
        assert after_release is True
    # a holder that died: the key is left behind, without renewal it expires
    job_store.client.set(job_store.key(job, "gathering"), "dead-holder", px=300)
    with job_store.gather_lock(job) as while_dead:
        assert while_dead is False
    time.sleep(0.4)
    with job_store.gather_lock(job) as after_expiry:
        assert after_expiry is True


def test_the_collector_is_paused_while_blobs_are_decoded_and_restored_after() -> None:
    import gc

    from curator_worker.jobs import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), collector_paused():
        decode_paths(b'{"v": 1}')  # an unknown format raises inside
    assert gc.isenabled(), "re-enabled after an error"
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled(), "left off when it was off"
    finally:
        gc.enable()
