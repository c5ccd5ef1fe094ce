"""The record components: JSON Lines and Parquet sources and sinks, TextStats, fsspec URLs.

Pipelines run through the real backends (sequential and process_pool); outputs are compared
byte for byte. Object storage is exercised with fsspec's ``memory://`` and ``file://`` here;
``test_formats_s3.py`` runs against a real S3 server.
"""

from __future__ import annotations

import inspect
import json
import random
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator_worker import run_pipeline
from curator_worker.components import (
    JsonlChunked,
    JsonlFiles,
    JsonlSink,
    ParquetChunked,
    ParquetFiles,
    ParquetSink,
    TextStats,
)
from curator_worker.components.storage import PathList, resolve_storage_options, write_bytes
from curator_worker.components.text import text_digest
from curator_worker.contract.pipeline import REQUIRED, Pipeline, is_stateful
from curator_worker.contract.spec import load_spec
from curator_worker.errors import SpecError
from tests.support.records import corpus, write_jsonl

REPO = Path(__file__).resolve().parents[3]
COMPONENTS = [JsonlFiles, ParquetFiles, TextStats, JsonlSink, JsonlChunked, ParquetSink,
              ParquetChunked]


def make_jsonl_dir(folder: Path, n_files: int = 7, per_file: int = 9) -> list[list[dict]]:
    files = corpus(n_files, per_file)
    for f, records in enumerate(files):
        write_jsonl(folder / f"shard-{f:02d}.jsonl", records)
    return files


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``folder`` (shard folders excluded)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".shards" not in str(p)}


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("cls", COMPONENTS, ids=lambda c: c.__name__)
def test_params_match_init_signature(cls: type) -> None:
    signature = inspect.signature(cls.__init__)
    assert [p.name for p in cls.params()] == [n for n in signature.parameters if n != "self"]
    for p in cls.params():
        default = signature.parameters[p.name].default
        if default is inspect.Parameter.empty:
            assert p.default is REQUIRED
        else:
            assert p.default == default
            assert default is None or isinstance(default, p.type)
    assert cls.name == cls.__name__ and cls.description


def test_text_stats_is_stateful() -> None:
    assert is_stateful(TextStats(output="t.json"))


# --------------------------------------------------------------------------- round trips


def test_jsonl_to_parquet_and_back_round_trips(tmp_path: Path) -> None:
    files = make_jsonl_dir(tmp_path / "raw")
    originals = sorted((tmp_path / "raw").glob("*.jsonl"))

    to_parquet = JsonlFiles(paths=str(tmp_path / "raw" / "*.jsonl")).write(
        ParquetSink(output_dir=str(tmp_path / "pq"), compression="zstd"))
    written = run_pipeline(to_parquet)
    assert [Path(p[0]).name for p in written] == [f"part_{i:08d}.parquet" for i in range(7)]
    for f, records in enumerate(files):
        assert pq.read_table(tmp_path / "pq" / f"part_{f:08d}.parquet").to_pylist() == records

    back = ParquetFiles(paths=str(tmp_path / "pq" / "*.parquet")).write(
        JsonlSink(output_dir=str(tmp_path / "back"), prefix="p"))
    run_pipeline(back)
    for f, original in enumerate(originals):
        assert (tmp_path / "back" / f"p_{f:08d}.jsonl").read_bytes() == original.read_bytes()


def test_sources_yield_records_with_provenance(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "b.jsonl", [{"text": "x"}, {"text": "y"}])
    (tmp_path / "a.jsonl").write_text('{"text": "z"}\n\n   \n{"text": "w"}\n')
    source = JsonlFiles(paths=[str(tmp_path / "*.jsonl")])
    assert [Path(p).name for p in source.files] == ["a.jsonl", "b.jsonl"]  # sorted listing
    items = list(source[0])
    assert [(i["index"], i["row"], i["fields"]) for i in items] == [
        (0, 0, {"text": "z"}), (0, 1, {"text": "w"})]
    assert items[0]["path"] == source.files[0]
    with pytest.raises(IndexError):
        source[2]
    # An explicit list keeps its order; a file named twice counts once.
    listed = JsonlFiles(paths=[str(tmp_path / "b.jsonl"), str(tmp_path / "*.jsonl")])
    assert [Path(p).name for p in listed.files] == ["b.jsonl", "a.jsonl"]

    pq.write_table(pa.table({"text": ["a", "b", "c"], "n": [1, 2, 3]}), tmp_path / "t.parquet",
                   row_group_size=2)
    whole = ParquetFiles(paths=str(tmp_path / "t.parquet"), columns="text")
    assert [i["fields"] for i in whole[0]] == [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    groups = ParquetFiles(paths=str(tmp_path / "t.parquet"), row_groups=True)
    assert len(groups) == 2
    [last] = list(groups[1])
    assert (last["row"], last["row_group"], last["fields"]) == (2, 1, {"text": "c", "n": 3})


def test_globs_that_match_nothing_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no files match .*\*\.jsonl"):
        JsonlFiles(paths=str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match="no paths given"):
        ParquetFiles(paths=[])


def test_gzip_jsonl_is_read(tmp_path: Path) -> None:
    import gzip

    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as fh:
        fh.write(b'{"text": "packed"}\n')
    assert [i["fields"] for i in JsonlFiles(paths=str(tmp_path / "*.jsonl.gz"))[0]] == [
        {"text": "packed"}]


# --------------------------------------------------------------------------- chunked sinks


def test_chunked_sinks_rewrite_an_index_idempotently(tmp_path: Path) -> None:
    for cls, read in ((JsonlChunked, lambda p: [json.loads(x) for x in open(p)]),
                      (ParquetChunked, lambda p: pq.read_table(p).to_pylist())):
        sink = cls(output_dir=str(tmp_path / cls.__name__), chunk_size=3)
        sink(iter([{"fields": {"t": "five"}}]), 5)
        sink(iter([{"fields": {"t": "three"}}, {"fields": {"t": "three-b"}}]), 3)
        [path] = sink(iter([{"fields": {"t": "four"}}]), 4)
        first = Path(path).read_bytes()
        sink(iter([{"fields": {"t": "four"}}]), 4)  # rewritten: same bytes
        assert Path(path).read_bytes() == first
        assert read(path) == [{"_index": 3, "t": "three"}, {"_index": 3, "t": "three-b"},
                              {"_index": 4, "t": "four"}, {"_index": 5, "t": "five"}]
        sink(iter([]), 3)  # index 3 now has no records
        assert [r["_index"] for r in read(path)] == [4, 5]
        with pytest.raises(ValueError, match="already has a field '_index'"):
            sink(iter([{"fields": {"_index": 1}}]), 4)
        assert sink.partition_indices([7, 0, 2, 3]) == [[0, 2], [3], [7]]


# --------------------------------------------------------------------------- backends


def text_pipeline(raw: Path, out: Path, sink_cls: type, **sink_params: Any) -> Pipeline:
    """JSONL files -> TextStats -> ``sink_cls``, all outputs under ``out``."""
    return Pipeline(
        JsonlFiles(paths=str(raw / "*.jsonl")),
        [TextStats(output=str(out / "text.json"))],
        sink_cls(output_dir=str(out / "data"), **sink_params),
    )


@pytest.mark.parametrize("sink_cls,params", [
    (ParquetSink, {}), (JsonlSink, {}), (ParquetChunked, {"chunk_size": 3}),
    (JsonlChunked, {"chunk_size": 4}),
], ids=["parquet", "jsonl", "parquet-chunked", "jsonl-chunked"])
def test_outputs_are_byte_identical_sequential_and_process_pool(
    tmp_path: Path, sink_cls: type, params: dict[str, Any]
) -> None:
    make_jsonl_dir(tmp_path / "raw", n_files=11, per_file=6)
    sequential = text_pipeline(tmp_path / "raw", tmp_path / "seq" / "out", sink_cls, **params)
    parallel = text_pipeline(tmp_path / "raw", tmp_path / "par" / "out", sink_cls, **params)
    seq_paths = run_pipeline(sequential)
    par_paths = run_pipeline(parallel, backend="process_pool", n_jobs=2, batch_size=2)
    seq_files = tree_bytes(tmp_path / "seq" / "out")
    par_files = tree_bytes(tmp_path / "par" / "out")
    assert seq_files == par_files
    assert "text.json" in seq_files and len(seq_files) > 2
    assert [[p.replace("/seq/", "/par/") for p in ps] for ps in seq_paths] == par_paths
    doc = json.loads(seq_files["text.json"])
    assert doc["documents"] == doc["items"] == 66 and doc["duplicates"] > 0


def test_row_group_partitions_are_never_split_across_batches(tmp_path: Path) -> None:
    # 5 files of 1-4 row groups; every row's text names its file.
    sizes = [3, 1, 4, 2, 1]
    for f, groups in enumerate(sizes):
        texts = [f"file{f}-row{r}" for r in range(groups * 2)]
        pq.write_table(pa.table({"text": texts}), tmp_path / f"in-{f}.parquet", row_group_size=2)
    source = ParquetFiles(paths=str(tmp_path / "in-*.parquet"), row_groups=True)
    assert len(source) == sum(sizes)
    owner = {text_digest(f"file{f}-row{r}").hex(): f
             for f, groups in enumerate(sizes) for r in range(groups * 2)}
    pipeline = Pipeline(source, [TextStats(output=str(tmp_path / "text.json"))],
                        JsonlSink(output_dir=str(tmp_path / "out")))
    for batch_size in (1, 2, 3):
        result = run_pipeline(pipeline, backend="process_pool", n_jobs=2,
                              batch_size=batch_size, gather=False)
        shards = sorted((tmp_path / "text.json.shards" / result.run_id).glob("*.shard"))
        seen: dict[int, int] = {}
        for shard in shards:
            digests = json.loads(shard.read_text())["state"]["digests"]
            for f in {owner[d] for d in digests}:
                seen[f] = seen.get(f, 0) + 1
            counts = {f: sum(1 for d in digests if owner[d] == f) for f in range(len(sizes))}
            for f, n in counts.items():
                assert n in (0, sizes[f] * 2), f"file {f} split in batch_size={batch_size}"
        assert seen == {f: 1 for f in range(len(sizes))}, batch_size
        assert len(shards) <= len(sizes)
    # With a chunked sink whose chunks straddle files, both partitions are kept whole.
    chunked = Pipeline(source, [], JsonlChunked(output_dir=str(tmp_path / "c"), chunk_size=2))
    groups = chunked.partition_groups(list(range(len(source))))
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10]]
    run_pipeline(chunked, backend="process_pool", n_jobs=2, batch_size=1)
    lines = [json.loads(x) for p in sorted((tmp_path / "c").glob("*.jsonl")) for x in open(p)]
    assert [x["text"] for x in lines] == [f"file{f}-row{r}" for f, groups in enumerate(sizes)
                                          for r in range(groups * 2)]


def test_bad_files_are_index_failures_not_crashes(tmp_path: Path) -> None:
    good = corpus(3, 4)
    for f, records in enumerate(good):
        write_jsonl(tmp_path / "raw" / f"{f}.jsonl", records)
    bad_json = tmp_path / "raw" / "bad-json.jsonl"
    bad_json.write_text('{"text": "counted only if the file is good"}\n{"text": oops}\n')
    (tmp_path / "raw" / "bad-array.jsonl").write_text('[1, 2]\n')
    missing = tmp_path / "raw" / "missing.jsonl"
    paths = [str(tmp_path / "raw" / "[0-9].jsonl"), str(bad_json),
             str(tmp_path / "raw" / "bad-array.jsonl"), str(missing)]
    pipeline = Pipeline(JsonlFiles(paths=paths), [TextStats(output=str(tmp_path / "t.json"))],
                        ParquetSink(output_dir=str(tmp_path / "pq")))
    result = run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=2,
                          on_error="collect")
    assert sorted(result.failures) == [3, 4, 5]
    assert result.failures[3].startswith("ValueError: ") and "line 2 is not valid JSON" in \
        result.failures[3]
    assert "line 1 is a JSON list, not an object" in result.failures[4]
    assert result.failures[5].startswith("FileNotFoundError")
    assert result[:3] == [[str(tmp_path / "pq" / f"part_{i:08d}.parquet")] for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == [
        f"part_{i:08d}.parquet" for i in range(3)]
    # The failed index contributes nothing, not even the line read before the bad one.
    stats = json.loads((tmp_path / "t.json").read_text())
    assert stats["items"] == stats["documents"] == 12
    assert stats["unique"] == len({r["text"] for records in good for r in records})

    # Corrupt Parquet: per file, and per row group (the bad file is one failing index).
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), tmp_path / "ok.parquet",
                   row_group_size=1)
    (tmp_path / "zz-corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    for row_groups in (False, True):
        source = ParquetFiles(paths=str(tmp_path / "*.parquet"), row_groups=row_groups)
        out = tmp_path / f"back-{row_groups}"
        result = run_pipeline(Pipeline(source, [], JsonlSink(output_dir=str(out))),
                              backend="process_pool", n_jobs=2, batch_size=1,
                              on_error="collect")
        bad = len(source) - 1
        assert list(result.failures) == [bad], result.failures
        assert "ArrowInvalid" in result.failures[bad] or "Parquet" in result.failures[bad]
        assert len(list(out.iterdir())) == bad


def test_a_failed_record_write_leaves_no_output(tmp_path: Path) -> None:
    sink = ParquetSink(output_dir=str(tmp_path / "pq"))
    with pytest.raises(pa.ArrowException):
        sink(iter([{"fields": {"x": 1}}, {"fields": {"x": "one"}}]), 0)
    assert not (tmp_path / "pq").exists() or list((tmp_path / "pq").iterdir()) == []


# --------------------------------------------------------------------------- TextStats


def test_text_stats_merge_equals_a_sequential_flush_byte_for_byte(tmp_path: Path) -> None:
    files = corpus(6, 20, seed=3)
    items = [{"fields": r} for records in files for r in records]
    items.insert(5, {"fields": {"text": None}})
    items.insert(9, {"fields": {"other": "x"}})
    whole = TextStats(output=str(tmp_path / "seq.json"))
    list(whole(iter(items)))
    sequential = Path(whole.flush()).read_bytes()
    doc = json.loads(sequential)
    assert doc["items"] == 122 and doc["missing"] == 2 and doc["documents"] == 120
    assert doc["unique"] + doc["duplicates"] == 120 and doc["duplicates"] > 0
    lengths = [len(r["text"]) for records in files for r in records]
    assert doc["length"]["sum"] == sum(lengths) and doc["length"]["max"] == max(lengths)
    assert sum(b["count"] for b in doc["length"]["histogram"]) == 120

    cuts = [0, 7, 8, 50, 122]
    shards = []
    for n, (a, b) in enumerate(zip(cuts, cuts[1:])):
        part = TextStats(output="unused.json")
        part._output_path = str(tmp_path / f"shard-{n}.json")
        list(part(iter(items[a:b])))
        shards.append(part.flush())
    for trial in range(3):
        order = shards[:]
        random.Random(trial).shuffle(order)
        merged = TextStats.merge(order, str(tmp_path / f"m{trial}.json"))
        assert Path(merged).read_bytes() == sequential
    half = TextStats.merge(shards[:2], str(tmp_path / "h1.json"))
    rest = TextStats.merge(shards[2:], str(tmp_path / "h2.json"))
    assert Path(TextStats.merge([rest, half], str(tmp_path / "h.json"))).read_bytes() == \
        sequential
    (tmp_path / "bogus.json").write_text('{"fields": {}}')
    with pytest.raises(ValueError, match="is not a TextStats file"):
        TextStats.merge([str(tmp_path / "bogus.json")], str(tmp_path / "x.json"))


def test_text_stats_copies_share_frozen_counts_without_leaking(tmp_path: Path) -> None:
    import copy

    stats = TextStats(output=str(tmp_path / "t.json"))
    list(stats(iter([{"fields": {"text": "a"}}])))
    snapshot = copy.deepcopy(stats)
    list(stats(iter([{"fields": {"text": "a"}}, {"fields": {"text": "b"}}])))
    assert snapshot.summary()["documents"] == 1 and snapshot.summary()["unique"] == 1
    assert stats.summary()["documents"] == 3 and stats.summary()["duplicates"] == 1
    list(snapshot(iter([{"fields": {"text": "c"}}])))
    assert stats.summary()["unique"] == 2  # the copy's counts never reach the original
    copy.deepcopy(stats)  # both freeze their live layer onto the list they share
    copy.deepcopy(snapshot)
    def digests(f: TextStats) -> dict[str, int]:
        return f.summary()["state"]["digests"]

    a, b, c = (text_digest(t).hex() for t in "abc")
    assert digests(snapshot) == {a: 1, c: 1}
    assert digests(stats) == {a: 2, b: 1}
    for _ in range(200):  # many copies fold their layers
        stats = copy.deepcopy(stats)
        list(stats(iter([{"fields": {"text": "a"}}])))
    assert stats.summary()["documents"] == 203


# --------------------------------------------------------------------------- fsspec URLs


def test_memory_urls_work_end_to_end(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    files = corpus(4, 5, seed=9)
    for f, records in enumerate(files):
        data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
        fs.pipe_file(f"/cw-test/raw/{f}.jsonl", data)
    fs.pipe_file("/cw-test/raw/folder.jsonl/inner.txt", b"a folder that matches the glob")
    source = JsonlFiles(paths="memory://cw-test/raw/*.jsonl")
    assert source.files == tuple(f"memory:///cw-test/raw/{f}.jsonl" for f in range(4))
    pipeline = Pipeline(
        source,
        [TextStats(output=str(tmp_path / "text.json"))],  # runners shard it locally
        ParquetSink(output_dir="memory://cw-test/out"),
    )
    paths = run_pipeline(pipeline, indices=[2, 0])
    assert paths == [["memory://cw-test/out/part_00000002.parquet"],
                     ["memory://cw-test/out/part_00000000.parquet"]]
    with fsspec.open(paths[0][0], "rb") as fh:
        assert pq.read_table(fh).to_pylist() == files[2]
    # The stateful filter writes a URL output with flush and merge alike.
    stats = TextStats(output="memory://cw-test/stats/direct.json")
    list(stats(iter({"fields": r} for r in files[0])))
    flushed = stats.flush()
    merged = TextStats.merge([flushed], "memory://cw-test/stats/merged.json")
    assert fs.cat_file("/cw-test/stats/direct.json") == fs.cat_file(merged.split("://")[1])


def test_file_urls_work_on_process_pool(tmp_path: Path) -> None:
    make_jsonl_dir(tmp_path / "raw", n_files=5, per_file=3)
    pipeline = Pipeline(JsonlFiles(paths=f"file://{tmp_path}/raw/*.jsonl"), [],
                        ParquetChunked(output_dir=f"file://{tmp_path}/out", chunk_size=2))
    result = run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=1)
    assert result == [[f"file://{tmp_path}/out/chunk_{i // 2:06d}.parquet"] for i in range(5)]
    rows = pq.read_table(tmp_path / "out" / "chunk_000001.parquet").to_pylist()
    assert [r["_index"] for r in rows] == [2] * 3 + [3] * 3
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- credentials


def test_credentials_in_clear_are_refused_without_echoing_them(tmp_path: Path) -> None:
    secret = "wJalrXUtnFEMI-do-not-print"
    for options in ({"secret": secret}, {"client_kwargs": {"aws_secret_access_key": secret}}):
        with pytest.raises(ValueError, match="credential in clear") as info:
            JsonlSink(output_dir="s3://bucket/out", storage_options=options)
        assert secret not in str(info.value)
    for build in (lambda: JsonlFiles(paths=["a.jsonl", f"ftp://me:{secret}@host/b.jsonl"]),
                  lambda: ParquetSink(output_dir=f"sftp://me:{secret}@host/out"),
                  lambda: TextStats(output=f"https://me:{secret}@host/t.json")):
        with pytest.raises(ValueError, match="a URL holds a password") as info:
            build()
        assert secret not in str(info.value)
    spec = {"version": 1,
            "source": {"name": "JsonlFiles", "module": "curator_worker.components.jsonl",
                       "params": {"paths": "s3://bucket/raw/*.jsonl",
                                  "storage_options": {"key": "AKIA-in-clear"}}},
            "filters": [],
            "sink": {"name": "JsonlSink", "module": "curator_worker.components.jsonl",
                     "params": {"output_dir": str(tmp_path)}}}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(SpecError, match="'key' hold a credential in clear") as info:
        load_spec(spec_path)
    assert "AKIA-in-clear" not in str(info.value)


def test_environment_references_are_read_where_the_file_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"key": "${CW_TEST_KEY}", "client_kwargs": {"endpoint_url": "${CW_TEST_URL}"}}
    sink = JsonlSink(output_dir=str(tmp_path), storage_options=options)
    assert sink.init_params["storage_options"] == options  # what a saved spec holds
    monkeypatch.delenv("CW_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match=r"refers to \$\{CW_TEST_KEY\}, which is not set"):
        resolve_storage_options(options, "JsonlSink")
    monkeypatch.setenv("CW_TEST_KEY", "k")
    monkeypatch.setenv("CW_TEST_URL", "http://127.0.0.1:1")
    assert resolve_storage_options(options, "JsonlSink") == {
        "key": "k", "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}


# --------------------------------------------------------------------------- specs, examples


def test_specs_save_and_load_the_record_components(tmp_path: Path) -> None:
    make_jsonl_dir(tmp_path / "raw", n_files=2, per_file=2)
    pipeline = Pipeline(
        JsonlFiles(paths=[str(tmp_path / "raw" / "*.jsonl")]),
        [TextStats(output=str(tmp_path / "t.json"), field="text")],
        ParquetChunked(output_dir=str(tmp_path / "out"), chunk_size=8, compression="zstd"),
    )
    pipeline.save(tmp_path / "spec.yaml")
    loaded = Pipeline.load(tmp_path / "spec.yaml")
    assert isinstance(loaded.source, JsonlFiles) and loaded.source.files == pipeline.source.files
    assert loaded.source.paths == PathList([str(tmp_path / "raw" / "*.jsonl")])
    assert loaded.sink.compression == "zstd"
    run_pipeline(loaded)
    assert json.loads((tmp_path / "t.json").read_text())["documents"] == 4


def test_the_local_jsonl_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_jsonl_dir(tmp_path / "demo-data" / "raw", n_files=3, per_file=4)
    pipeline = Pipeline.load(REPO / "examples" / "jsonl_to_parquet.yaml")
    run_pipeline(pipeline, backend="process_pool", n_jobs=2)
    assert len(list((tmp_path / "demo-out" / "parquet").glob("*.parquet"))) == 3
    assert json.loads((tmp_path / "demo-out" / "text-stats.json").read_text())["documents"] == 12


def test_write_bytes_on_a_url_is_one_put_of_the_final_name() -> None:
    fs = fsspec.filesystem("memory")
    write_bytes("memory://cw-test/one/put.bin", b"\x00" * 10)
    assert fs.cat_file("/cw-test/one/put.bin") == b"\x00" * 10
    assert fs.ls("/cw-test/one", detail=False) == ["/cw-test/one/put.bin"]


def test_parquet_without_pyarrow_names_the_extra_to_install() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "from curator_worker.components import ParquetFiles")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "pip install 'curator-worker[parquet]'" in done.stderr.splitlines()[-1]
