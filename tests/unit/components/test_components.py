"""Unit tests of the ready-made components (sources, filters, sinks, atomic writes)."""

from __future__ import annotations

import inspect
import json
import random
from pathlib import Path

import numpy as np
import pytest

from curator_worker.atomic import atomic_path, atomic_write
from curator_worker.components import (
    FieldStats,
    FileGlob,
    NpzChunked,
    NpzPerIndex,
    SyntheticArrays,
)
from curator_worker.contract.pipeline import REQUIRED, Pipeline, is_stateful

ALL_COMPONENTS = [SyntheticArrays, FileGlob, FieldStats, NpzPerIndex, NpzChunked]


def _items(source: SyntheticArrays, index: int) -> list[dict]:
    return list(source[index])


def _tmp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("cls", ALL_COMPONENTS, ids=lambda c: c.__name__)
def test_params_match_init_signature(cls: type) -> None:
    signature = inspect.signature(cls.__init__)
    init_names = [name for name in signature.parameters if name != "self"]
    params = cls.params()
    assert [p.name for p in params] == init_names
    for p in params:
        default = signature.parameters[p.name].default
        if default is inspect.Parameter.empty:
            assert p.default is REQUIRED
        else:
            assert p.default == default
            assert isinstance(default, p.type)
    assert cls.name == cls.__name__
    assert cls.description


def test_init_params_are_recorded(tmp_path: Path) -> None:
    source = SyntheticArrays(count=3, seed=5)
    assert source.init_params == {"count": 3, "seed": 5}
    assert is_stateful(FieldStats(output=str(tmp_path / "s.json")))


# --------------------------------------------------------------------------- SyntheticArrays


def test_synthetic_is_deterministic_across_instances() -> None:
    a = SyntheticArrays(count=5, seed=3, size=16, items_per_index=2)
    b = SyntheticArrays(count=5, seed=3, size=16, items_per_index=2)
    # Read in different orders: each index's data must not depend on what was read before.
    first = {i: _items(a, i) for i in range(5)}
    second = {i: _items(b, i) for i in reversed(range(5))}
    for i in range(5):
        assert len(first[i]) == 2
        for x, y in zip(first[i], second[i], strict=True):
            assert x["index"] == y["index"] == i
            assert sorted(x["fields"]) == ["pressure", "velocity"]
            for name in x["fields"]:
                assert x["fields"][name].dtype == np.float64
                assert x["fields"][name].shape == (16,)
                np.testing.assert_array_equal(x["fields"][name], y["fields"][name])
    # Items of one index differ from each other.
    assert not np.array_equal(first[0][0]["fields"]["pressure"], first[0][1]["fields"]["pressure"])


def test_synthetic_seeds_and_fields_differ() -> None:
    a = _items(SyntheticArrays(count=2, seed=0), 1)[0]["fields"]["pressure"]
    b = _items(SyntheticArrays(count=2, seed=1), 1)[0]["fields"]["pressure"]
    assert not np.array_equal(a, b)
    item = _items(SyntheticArrays(count=1, fields="a, b ,c", size=4), 0)[0]
    assert list(item["fields"]) == ["a", "b", "c"]


def test_synthetic_index_errors() -> None:
    source = SyntheticArrays(count=3)
    with pytest.raises(IndexError):
        source[3]
    with pytest.raises(IndexError):
        source[-4]
    assert _items(source, -1)[0]["index"] == 2
    assert len(source) == 3


def test_synthetic_fail_indices() -> None:
    source = SyntheticArrays(count=4, fail_indices="1,3")
    assert len(_items(source, 0)) == 1
    with pytest.raises(RuntimeError, match="synthetic failure at index 3"):
        _items(source, 3)
    with pytest.raises(ValueError, match="fail_indices"):
        SyntheticArrays(count=4, fail_indices="1,x")


def test_synthetic_fail_unless_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CW_TEST_FIXED", raising=False)
    source = SyntheticArrays(count=4, fail_indices="2", fail_unless_env="CW_TEST_FIXED")
    with pytest.raises(RuntimeError, match="synthetic failure at index 2"):
        _items(source, 2)
    monkeypatch.setenv("CW_TEST_FIXED", "")
    with pytest.raises(RuntimeError):
        _items(source, 2)
    monkeypatch.setenv("CW_TEST_FIXED", "1")
    assert _items(source, 2)[0]["index"] == 2


def test_synthetic_work_and_sleep_run() -> None:
    source = SyntheticArrays(count=1, size=2, work_ms=1.0, sleep_ms=1.0)
    assert len(_items(source, 0)) == 1


# --------------------------------------------------------------------------- FileGlob


def test_file_glob_reads_npz_npy_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "b.npz", x=np.arange(3), y=np.ones((2, 2)))
    np.save(tmp_path / "sub" / "a.npy", np.array([1.5, 2.5]))
    (tmp_path / "c.txt").write_bytes(b"abc")
    (tmp_path / "emptydir").mkdir()

    source = FileGlob(pattern="**/*", root=str(tmp_path))
    names = [Path(p).name for p in source.files]
    assert names == ["b.npz", "c.txt", "a.npy"]  # sorted by path: b.npz < c.txt < sub/a.npy
    assert len(source) == 3

    [b] = list(source[0])
    assert b["index"] == 0 and Path(b["path"]).name == "b.npz"
    assert sorted(b["fields"]) == ["x", "y"]
    np.testing.assert_array_equal(b["fields"]["x"], np.arange(3))
    [c] = list(source[1])
    assert c["fields"]["bytes"].dtype == np.uint8
    assert c["fields"]["bytes"].tobytes() == b"abc"
    [a] = list(source[2])
    np.testing.assert_array_equal(a["fields"]["data"], [1.5, 2.5])
    with pytest.raises(IndexError):
        source[3]

    only_npy = FileGlob(pattern="**/*.npy", root=str(tmp_path))
    assert [Path(p).name for p in only_npy.files] == ["a.npy"]


def test_file_glob_no_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no files match"):
        FileGlob(pattern="*.npz", root=str(tmp_path))


# --------------------------------------------------------------------------- FieldStats


def test_field_stats_sharded_merge_is_byte_identical(tmp_path: Path) -> None:
    n = 23
    source = SyntheticArrays(count=n, seed=7, size=33, items_per_index=2,
                             fields="pressure,velocity,temp")
    sink = NpzPerIndex(output_dir=str(tmp_path / "out"))

    sequential_out = tmp_path / "sequential.json"
    stats = FieldStats(output=str(sequential_out))
    pipeline = Pipeline(source, [stats], sink)
    for i in range(n):
        pipeline[i]
    assert stats.flush() == str(sequential_out)

    rng = random.Random(1)
    indices = list(range(n))
    rng.shuffle(indices)
    groups = [indices[:5], indices[5:6], indices[6:15], indices[15:]]
    shards = []
    for g, group in enumerate(groups):
        shard_stats = FieldStats(output=str(tmp_path / "final.json"))
        shard_stats._output_path = str(tmp_path / f"shard_{g}.json")
        for i in group:
            pipeline.run_index(i, filters=[shard_stats])
        shards.append(shard_stats.flush())
    assert not (tmp_path / "final.json").exists()

    for trial in range(3):
        order = shards[:]
        random.Random(trial).shuffle(order)
        merged = FieldStats.merge(order, str(tmp_path / f"merged_{trial}.json"))
        assert Path(merged).read_bytes() == sequential_out.read_bytes()

    # Merging merged files is also exact.
    half = FieldStats.merge(shards[:2], str(tmp_path / "half_a.json"))
    other = FieldStats.merge(shards[2:], str(tmp_path / "half_b.json"))
    again = FieldStats.merge([other, half], str(tmp_path / "again.json"))
    assert Path(again).read_bytes() == sequential_out.read_bytes()

    doc = json.loads(sequential_out.read_text())
    assert doc["items"] == 2 * n
    assert sorted(doc["fields"]) == ["pressure", "temp", "velocity"]
    for name, summary in doc["fields"].items():
        data = np.concatenate([item["fields"][name] for i in range(n) for item in source[i]])
        assert summary["count"] == data.size
        assert np.allclose(summary["mean"], data.mean(), rtol=1e-12, atol=1e-12)
        assert np.allclose(summary["std"], data.std(), rtol=1e-12, atol=1e-12)
        assert summary["min"] == data.min()
        assert summary["max"] == data.max()
        state = doc["state"][name]
        assert state["count"] == data.size
        assert all(isinstance(v, int) for v in state["sum"] + state["sumsq"])
    assert not _tmp_files(tmp_path)


def _sum_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    wide = rng.standard_normal(3000) * 10.0 ** rng.integers(-320, 300, 3000)
    return [
        rng.standard_normal(1000),
        rng.standard_normal(2000) * 1e300,  # near overflow
        rng.standard_normal(2000) * 1e-310,  # subnormals
        wide[np.isfinite(wide)],  # every exponent range at once
        np.array([1e308, 1e308, -1e308] * 100),  # intermediate overflow, finite total
        np.array([1e308] * 300),  # the total overflows: kept exact
        np.array([0.0, -0.0] * 200),
        rng.integers(-2**40, 2**40, 4000).astype(np.float64),
        np.full(1000, 0.1),  # rounding
        np.array([2.0**-1074] * 1000),  # the smallest subnormal
        np.array([2.0**52 + 1, -2.0**52, 0.5, 0.25] * 100),  # ties and cancellation
    ]


@pytest.mark.parametrize("chunk", [7, 1000, 1 << 16])
def test_vectorised_exact_sum_equals_fsum_to_the_bit(monkeypatch, chunk: int) -> None:
    """FieldStats sums big arrays vectorised; the result must be fsum's, exactly."""
    from curator_worker.components import filters

    monkeypatch.setattr(filters, "_EXACT_SUM_CHUNK", chunk)
    for values in _sum_cases():
        expected = filters._exact_sum(values.tolist())
        assert filters._exact_array_sum(values) == expected
    assert filters._exact_array_sum(np.array([], dtype=np.float64)) == 0


def test_field_stats_of_a_big_array(tmp_path: Path) -> None:
    """A field big enough for the vectorised sums: the summary numpy computes."""
    rng = np.random.default_rng(9)
    big = rng.standard_normal(20_000) * 1e3
    whole = FieldStats(output=str(tmp_path / "whole.json"))
    list(whole(iter([{"index": 0, "fields": {"x": big}}])))
    summary = json.loads(Path(whole.flush()).read_text())["fields"]["x"]
    assert summary["count"] == 20_000
    assert summary["mean"] == pytest.approx(float(np.mean(big)), rel=1e-12)
    assert summary["std"] == pytest.approx(float(np.std(big)), rel=1e-9)
    assert summary["min"] == float(big.min()) and summary["max"] == float(big.max())


def test_field_stats_passes_items_through_and_selects_fields(tmp_path: Path) -> None:
    items = [
        {"index": 0, "fields": {"a": np.array([1, 2, 3]), "b": np.array([10.0]),
                                "s": np.array(["x"]), "e": np.array([])}},
        {"index": 1, "fields": {"a": np.array([[4.0, np.nan]])}},
    ]
    stats = FieldStats(output=str(tmp_path / "all.json"))
    passed = list(stats(iter(items)))
    assert len(passed) == len(items) and all(p is q for p, q in zip(passed, items))
    doc = json.loads(Path(stats.flush()).read_text())
    assert sorted(doc["fields"]) == ["a", "b"]  # strings and empty arrays are skipped
    assert doc["fields"]["a"] == {"count": 4, "mean": 2.5, "std": pytest.approx(1.118033988749895),
                                  "min": 1.0, "max": 4.0}
    assert doc["items"] == 2

    only_b = FieldStats(output=str(tmp_path / "b.json"), fields="b")
    list(only_b(iter(items)))
    assert list(only_b.summary()["fields"]) == ["b"]
    assert only_b.artifacts() == [str(tmp_path / "b.json")]


def test_field_stats_merge_zero_shards(tmp_path: Path) -> None:
    out = FieldStats.merge([], str(tmp_path / "deep" / "empty.json"))
    assert json.loads(Path(out).read_text()) == {"fields": {}, "items": 0, "state": {}}
    empty_flush = FieldStats(output=str(tmp_path / "flushed.json")).flush()
    assert Path(empty_flush).read_bytes() == Path(out).read_bytes()


def test_field_stats_merge_rejects_foreign_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a FieldStats file"):
        FieldStats.merge([str(bad)], str(tmp_path / "out.json"))


def test_field_stats_signed_zero_is_order_independent(tmp_path: Path) -> None:
    a = {"index": 0, "fields": {"z": np.array([0.0])}}
    b = {"index": 1, "fields": {"z": np.array([-0.0])}}
    one, two = FieldStats(output="x"), FieldStats(output="y")
    list(one(iter([a, b])))
    list(two(iter([b, a])))
    assert json.dumps(one.summary()) == json.dumps(two.summary())


# --------------------------------------------------------------------------- NpzPerIndex


def test_npz_per_index_writes_one_file_per_index(tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = SyntheticArrays(count=4, size=5)
    pipeline = Pipeline(source, [], NpzPerIndex(output_dir=str(out)))
    for i in range(4):
        [path] = pipeline[i]
        assert Path(path) == out / f"item_{i:08d}.npz"
        expected = _items(source, i)[0]["fields"]
        with np.load(path) as archive:
            assert sorted(archive.files) == ["pressure", "velocity"]
            for name, arr in expected.items():
                np.testing.assert_array_equal(archive[name], arr)
    assert sorted(p.name for p in out.iterdir()) == [f"item_{i:08d}.npz" for i in range(4)]
    assert not _tmp_files(tmp_path)


def test_npz_per_index_several_and_zero_items(tmp_path: Path) -> None:
    source = SyntheticArrays(count=2, size=3, items_per_index=2, fields="p")
    sink = NpzPerIndex(output_dir=str(tmp_path), prefix="rec")
    [path] = Pipeline(source, [], sink)[1]
    with np.load(path) as archive:
        assert sorted(archive.files) == ["0__p", "1__p"]
        np.testing.assert_array_equal(archive["1__p"], _items(source, 1)[1]["fields"]["p"])

    none = SyntheticArrays(count=2, items_per_index=0)
    [empty] = Pipeline(none, [], sink)[0]
    assert Path(empty).name == "rec_00000000.npz"
    with np.load(empty) as archive:
        assert archive.files == []


def test_sink_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    source = SyntheticArrays(count=3, fail_indices="1")
    pipeline = Pipeline(source, [], NpzPerIndex(output_dir=str(tmp_path)))
    with pytest.raises(RuntimeError):
        pipeline[1]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- NpzChunked


def test_npz_chunked_partition_indices() -> None:
    sink = NpzChunked(output_dir="unused", chunk_size=4)
    assert sink.partition_indices([13, 2, 9, 0, 3, 8, 20]) == [[0, 2, 3], [8, 9], [13], [20]]
    assert sink.partition_indices([]) == []
    with pytest.raises(ValueError):
        NpzChunked(output_dir="unused", chunk_size=0)


def test_npz_chunked_contents_and_idempotence(tmp_path: Path) -> None:
    source = SyntheticArrays(count=10, size=3, fields="p,q")
    sink = NpzChunked(output_dir=str(tmp_path), chunk_size=4)
    pipeline = Pipeline(source, [], sink)
    assert pipeline.partition_groups([0, 1, 4, 5, 9]) == [[0, 1], [4, 5], [9]]

    paths = {i: pipeline[i] for i in (0, 1, 5, 9)}
    assert paths[0] == paths[1] == [str(tmp_path / "chunk_000000.npz")]
    assert paths[5] == [str(tmp_path / "chunk_000001.npz")]
    assert paths[9] == [str(tmp_path / "chunk_000002.npz")]

    def snapshot() -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for p in sorted(tmp_path.glob("*.npz")):
            with np.load(p) as archive:
                out[p.name] = {k: archive[k] for k in archive.files}
        return out

    before = snapshot()
    assert sorted(before["chunk_000000.npz"]) == [
        "i00000000__p", "i00000000__q", "i00000001__p", "i00000001__q",
    ]
    np.testing.assert_array_equal(
        before["chunk_000000.npz"]["i00000001__q"], _items(source, 1)[0]["fields"]["q"]
    )
    assert sorted(before["chunk_000002.npz"]) == ["i00000009__p", "i00000009__q"]

    pipeline[1]  # redelivery of an index already written
    after = snapshot()
    assert after.keys() == before.keys()
    for name in before:
        assert before[name].keys() == after[name].keys()
        for key in before[name]:
            np.testing.assert_array_equal(before[name][key], after[name][key])

    # Replacing an index with fewer fields removes its old keys.
    sink(iter([{"index": 1, "fields": {"r": np.zeros(2)}}]), 1)
    with np.load(tmp_path / "chunk_000000.npz") as archive:
        assert sorted(archive.files) == ["i00000000__p", "i00000000__q", "i00000001__r"]
    assert not _tmp_files(tmp_path)


def test_npz_chunked_several_items(tmp_path: Path) -> None:
    source = SyntheticArrays(count=3, size=2, fields="p", items_per_index=2)
    sink = NpzChunked(output_dir=str(tmp_path), chunk_size=16, prefix="c")
    [path] = Pipeline(source, [], sink)[2]
    assert Path(path).name == "c_000000.npz"
    with np.load(path) as archive:
        assert sorted(archive.files) == ["i00000002__0__p", "i00000002__1__p"]


# --------------------------------------------------------------------------- atomic


def test_atomic_path_replaces_on_success_and_cleans_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".file.txt.") and tmp.name.endswith(".tmp")
        tmp.write_text("one")
        assert not target.exists()
    assert target.read_text() == "one"

    with pytest.raises(OSError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError("boom")
    assert target.read_text() == "one"
    assert list(target.parent.iterdir()) == [target]

    assert atomic_write(target, lambda p: p.write_text("two")) == str(target)
    assert target.read_text() == "two"
