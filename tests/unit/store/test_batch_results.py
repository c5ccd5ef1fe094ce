"""The per-batch result blob: how the job store keeps a batch's per-index records."""

from __future__ import annotations

import json
import time

import pytest

from curator_worker.batch import execute_batch
from curator_worker.contract.pipeline import Pipeline, Sink, Source
from curator_worker.outcome import IndexResult, error_record
from curator_worker.policy import BatchPolicy
from curator_worker.store.batch_results import decode, decode_paths, encode


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


def test_the_collector_is_paused_while_blobs_are_decoded_and_restored_after() -> None:
    import gc

    from curator_worker.store.reads import collector_paused

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
