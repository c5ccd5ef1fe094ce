"""A stateful filter's output on ``s3://``: shards, commit and gather on object storage.

Against a real S3-compatible server (SeaweedFS, started by the fixtures of
``test_formats_s3``); no mock of S3. Shards go to attempt-unique keys under
``<output>.shards/<run>/``, gather merges only the committed keys (on local temp copies)
and writes the merged object in one write, then removes every object under the prefix.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from curator_worker import run_pipeline
from curator_worker.batch import execute_batch
from curator_worker.config import Settings
from curator_worker.contract.spec import build_pipeline
from curator_worker.shards import write_shards
from curator_worker.store import CANCELLED, PARTIAL, SUCCEEDED, JobStore
from producer.control import cancel_job, resume_job, retry_job
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.integration.test_celery_jobs import sequential_stats
from tests.integration.test_formats_s3 import BUCKET, s3fs_client, upload_corpus
from tests.support.cluster import running_nodes
from tests.support.s3 import S3Server
from tests.support.specs import stats_spec

pytestmark = pytest.mark.integration

JSONL = "curator_worker.components.jsonl"
PARQUET = "curator_worker.components.parquet"
TEXT = "curator_worker.components.text"


def text_spec(paths: str, stats: str, sink: dict) -> dict:
    return {"version": 1,
            "source": {"name": "JsonlFiles", "module": JSONL, "params": {"paths": paths}},
            "filters": [{"name": "TextStats", "module": TEXT, "params": {"output": stats}}],
            "sink": sink}


def fresh_prefix(server: S3Server, prefix: str) -> str:
    fs = s3fs_client(server)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    if fs.exists(f"{BUCKET}/{prefix}"):
        fs.rm(f"{BUCKET}/{prefix}", recursive=True)
    return f"s3://{BUCKET}/{prefix}"


def objects(server: S3Server, prefix: str) -> list[str]:
    """Every object under ``s3://BUCKET/prefix`` (fresh listing, no cache)."""
    fs = s3fs_client(server)
    try:
        return sorted(fs.find(f"{BUCKET}/{prefix}"))
    except FileNotFoundError:
        return []


def shard_urls(server: S3Server, prefix: str) -> list[str]:
    return [f"s3://{p}" for p in shard_objects(server, prefix)]


def shard_objects(server: S3Server, prefix: str) -> list[str]:
    return [p for p in objects(server, prefix) if ".shards/" in p]


def local_reference(tmp_path: Path, raw: Path, sink: str = "JsonlSink") -> Path:
    """A sequential run on local files; returns its folder (stats.json, out/)."""
    folder = tmp_path / "seq"
    module = JSONL if sink == "JsonlSink" else PARQUET
    params = {"output_dir": str(folder / "out")}
    spec = text_spec(str(raw / "*.jsonl"), str(folder / "stats.json"),
                     {"name": sink, "module": module, "params": params})
    run_pipeline(build_pipeline(spec), backend="sequential")
    return folder


@pytest.mark.parametrize("backend", ["sequential", "thread", "process_pool"])
def test_a_stateful_s3_output_on_the_local_backends_equals_a_local_run(
    backend: str, s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = fresh_prefix(s3_env, f"local-{backend}")
    upload_corpus(s3_env, f"local-{backend}/raw", tmp_path / "raw")
    reference = local_reference(tmp_path, tmp_path / "raw")
    monkeypatch.chdir(tmp_path)
    spec = text_spec(f"{url}/raw/*.jsonl", f"{url}/stats.json",
                     {"name": "JsonlSink", "module": JSONL, "params": {"output_dir": f"{url}/out"}})
    options = {} if backend == "sequential" else {"n_jobs": 2, "batch_size": 1}
    run_pipeline(build_pipeline(spec), backend=backend, **options)

    fs = s3fs_client(s3_env)
    assert fs.cat_file(f"{url}/stats.json") == (reference / "stats.json").read_bytes()
    for i in range(6):
        name = f"part_{i:08d}.jsonl"
        assert fs.cat_file(f"{url}/out/{name}") == (reference / "out" / name).read_bytes()
    assert shard_objects(s3_env, f"local-{backend}") == []
    assert not (tmp_path / "s3:").exists(), "a local folder named after the URL was made"


def test_gather_pipeline_merges_s3_shards_left_by_a_run_without_gather(
    s3_env: S3Server, tmp_path: Path
) -> None:
    from curator_worker.gather import gather_pipeline

    url = fresh_prefix(s3_env, "nogather")
    upload_corpus(s3_env, "nogather/raw", tmp_path / "raw")
    reference = local_reference(tmp_path, tmp_path / "raw")
    spec = text_spec(f"{url}/raw/*.jsonl", f"{url}/stats.json",
                     {"name": "JsonlSink", "module": JSONL, "params": {"output_dir": f"{url}/out"}})
    pipeline = build_pipeline(spec)
    run_pipeline(pipeline, backend="thread", n_jobs=2, batch_size=2, gather=False)
    assert len(shard_objects(s3_env, "nogather")) == 3
    assert gather_pipeline(pipeline) == [f"{url}/stats.json"]
    fs = s3fs_client(s3_env)
    assert fs.cat_file(f"{url}/stats.json") == (reference / "stats.json").read_bytes()
    assert shard_objects(s3_env, "nogather") == []


# --------------------------------------------------------------------------- Celery


@pytest.fixture(scope="module")
def isolated_cluster(s3_server: S3Server, cluster_settings: Settings,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    """Two worker nodes that share no folder: each its own cwd and TMPDIR (its "host"),
    folders ``host-x`` and ``host-y`` under the returned path; shared by this module's
    Celery tests (each job on its own S3 prefix)."""
    root = tmp_path_factory.mktemp("s3-hosts")
    queue = "curator-test-s3-shards"
    settings = Settings(broker_url=cluster_settings.broker_url, queue=queue,
                        visibility_timeout=3600)
    names = ["s3x@host-x", "s3y@host-y"]
    homes = {name: root / name.split("@")[1] for name in names}
    with running_nodes(settings, names, 1, root, env=s3_server.environ(), homes=homes):
        yield settings, root


@pytest.fixture()
def isolated_nodes(isolated_cluster: tuple[Settings, Path]) -> Settings:
    """The settings to submit to the nodes of :func:`isolated_cluster` with."""
    return isolated_cluster[0]


def test_an_s3_stateful_job_on_two_nodes_sharing_no_folder_equals_a_local_sequential_run(
    s3_env: S3Server, isolated_cluster: tuple[Settings, Path], store: JobStore, tmp_path: Path
) -> None:
    isolated_nodes, hosts = isolated_cluster
    url = fresh_prefix(s3_env, "two-hosts")
    upload_corpus(s3_env, "two-hosts/raw", tmp_path / "raw")
    spec = text_spec(f"{url}/raw/*.jsonl", f"{url}/stats.json",
                     {"name": "ParquetSink", "module": PARQUET,
                      "params": {"output_dir": f"{url}/out"}})
    job = submit_job(spec, isolated_nodes, batch_size=1)
    status = wait_for_job(store, job.job_id, settings=isolated_nodes, progress=False,
                          timeout=120)
    assert status.state == SUCCEEDED, store.failures(job.job_id)
    records = store.commit_records(job.job_id)
    assert {r["node"] for r in records.values()} == {"s3x@host-x", "s3y@host-y"}
    committed = [s for r in records.values() for s in r["shards"].values()]
    assert len(committed) == 6
    assert all(s.startswith(f"{url}/stats.json.shards/{job.job_id}/") for s in committed)
    assert s3_env.secret_key not in json.dumps(records)

    reference = local_reference(tmp_path, tmp_path / "raw", sink="ParquetSink")
    fs = s3fs_client(s3_env)
    assert fs.cat_file(f"{url}/stats.json") == (reference / "stats.json").read_bytes()
    for i in range(6):
        name = f"part_{i:08d}.parquet"
        assert fs.cat_file(f"{url}/out/{name}") == (reference / "out" / name).read_bytes()
    assert shard_objects(s3_env, "two-hosts") == []
    for host in ("host-x", "host-y"):  # nothing written on the "hosts" but their logs
        assert not (hosts / host / "s3:").exists()
        left = [p for p in (hosts / host / "tmp").rglob("*") if p.is_file()]
        assert left == []  # flush and merge temp copies removed


def test_retry_of_an_s3_job_merges_the_kept_shards_with_the_retried_ones(
    s3_env: S3Server, isolated_nodes: Settings, store: JobStore, tmp_path: Path
) -> None:
    url = fresh_prefix(s3_env, "retry")
    files = upload_corpus(s3_env, "retry/raw", tmp_path / "raw")
    fs = s3fs_client(s3_env)
    good = fs.cat_file(f"{BUCKET}/retry/raw/03.jsonl")
    fs.pipe_file(f"{BUCKET}/retry/raw/03.jsonl", b'{"text": "x"}\nnot json\n')
    spec = text_spec(f"{url}/raw/*.jsonl", f"{url}/stats.json",
                     {"name": "JsonlSink", "module": JSONL, "params": {"output_dir": f"{url}/out"}})
    job = submit_job(spec, isolated_nodes, batch_size=2)
    status = wait_for_job(store, job.job_id, settings=isolated_nodes, progress=False,
                          timeout=120)
    assert status.state == PARTIAL and sorted(store.failures(job.job_id)) == [3]
    kept = shard_objects(s3_env, "retry")
    assert len(kept) == 3, kept  # a partial job keeps its committed shards for retry

    fs.pipe_file(f"{BUCKET}/retry/raw/03.jsonl", good)
    assert retry_job(isolated_nodes, job.job_id) == 1
    status = wait_for_job(store, job.job_id, settings=isolated_nodes, progress=False,
                          timeout=120)
    assert status.state == SUCCEEDED, store.failures(job.job_id)
    assert len(files) == 6
    reference = local_reference(tmp_path, tmp_path / "raw")
    assert fs.cat_file(f"{url}/stats.json") == (reference / "stats.json").read_bytes()
    assert fs.cat_file(f"{url}/out/part_00000003.jsonl") == \
        (reference / "out" / "part_00000003.jsonl").read_bytes()
    assert shard_objects(s3_env, "retry") == []


def test_cancel_then_resume_of_an_s3_job_counts_every_index_once(
    s3_env: S3Server, isolated_nodes: Settings, store: JobStore, tmp_path: Path
) -> None:
    url = fresh_prefix(s3_env, "resume")
    spec = stats_spec(tmp_path / "unused", 80, size=8)
    spec["source"]["params"]["sleep_ms"] = 60.0
    spec["filters"][0]["params"]["output"] = f"{url}/stats.json"
    spec["sink"]["params"]["output_dir"] = str(tmp_path / "arrays")
    job = submit_job(spec, isolated_nodes, batch_size=4)
    deadline = time.monotonic() + 60
    while store.status(job.job_id).committed_batches < 3:
        assert time.monotonic() < deadline, "no batch committed"
        time.sleep(0.05)
    cancel_job(isolated_nodes, job.job_id)
    assert store.status(job.job_id).state == CANCELLED
    # running batches stop at their next index, uncommitted, and the queued ones are
    # skipped: wait until no message of the nodes' queue is queued or unacknowledged
    queue, broker = isolated_nodes.queue, store.client
    deadline = time.monotonic() + 30
    while broker.llen(queue) or any(json.loads(raw)[2] == queue
                                    for raw in broker.hvals("unacked")):
        assert time.monotonic() < deadline, "the cancelled job's messages did not drain"
        time.sleep(0.05)
    committed = store.status(job.job_id).committed_batches
    assert 3 <= committed < 20
    # An attempt that died after uploading its shard but before committing: a real shard
    # (indices 0-3 once more) under the job's prefix that no commit record names.
    pipeline = build_pipeline(spec)
    stray = write_shards(pipeline, execute_batch(pipeline, [0, 1, 2, 3]), job.job_id,
                         "b000000")["0"]
    assert stray in shard_urls(s3_env, "resume")
    assert resume_job(isolated_nodes, job.job_id) == 20 - committed
    status = wait_for_job(store, job.job_id, settings=isolated_nodes, progress=False,
                          timeout=120)
    assert status.state == SUCCEEDED and status.done == 80, store.failures(job.job_id)

    expected = sequential_stats(tmp_path, spec)
    assert s3fs_client(s3_env).cat_file(f"{url}/stats.json") == expected
    assert json.loads(expected)["items"] == 80
    assert shard_objects(s3_env, "resume") == []
    assert sorted(os.listdir(tmp_path / "arrays")) == [f"item_{i:08d}.npz" for i in range(80)]


@pytest.mark.usefixtures("clean_env")
def test_an_unfinished_embedded_s3_job_leaves_no_shard_objects(
    s3_env: S3Server, tmp_path: Path
) -> None:
    from curator_worker.components import FieldStats, NpzPerIndex, SyntheticArrays
    from curator_worker.errors import JobWaitTimeout

    url = fresh_prefix(s3_env, "embedded-unfinished")
    pipeline = (SyntheticArrays(count=6, size=4, sleep_ms=1500)
                .filter(FieldStats(output=f"{url}/stats.json"))
                .write(NpzPerIndex(output_dir=str(tmp_path / "arrays"))))
    with pytest.raises(JobWaitTimeout):
        run_pipeline(pipeline, backend="celery", n_jobs=1, batch_size=1, timeout=6,
                     progress=False)
    assert list((tmp_path / "arrays").glob("*.npz")), "some batches committed (and shards)"
    assert shard_objects(s3_env, "embedded-unfinished") == []
    assert not s3fs_client(s3_env).exists(f"{url}/stats.json")


def test_storage_options_credentials_reach_shards_gather_and_a_losing_attempts_discard(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials only as "${VARIABLE}" storage_options of the filter (no AWS_* in the
    environment): shards, the merge and a losing attempt's discard all use them."""
    from curator_worker.components import JsonlFiles, JsonlSink, TextStats
    from curator_worker.contract.pipeline import Pipeline
    from curator_worker.shards import discard_files

    url = fresh_prefix(s3_server, "options")
    upload_corpus(s3_server, "options/raw", tmp_path / "raw")
    reference = local_reference(tmp_path, tmp_path / "raw")
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CW_S3_KEY", s3_server.access_key)
    monkeypatch.setenv("CW_S3_SECRET", s3_server.secret_key)
    monkeypatch.setenv("CW_S3_ENDPOINT", s3_server.endpoint_url)
    options = {"key": "${CW_S3_KEY}", "secret": "${CW_S3_SECRET}",
               "client_kwargs": {"endpoint_url": "${CW_S3_ENDPOINT}"}}

    def pipeline() -> Pipeline:
        return Pipeline(JsonlFiles(paths=str(tmp_path / "raw" / "*.jsonl")),
                        [TextStats(output=f"{url}/stats.json", storage_options=options)],
                        JsonlSink(output_dir=str(tmp_path / "out")))

    run_pipeline(pipeline(), backend="thread", n_jobs=2, batch_size=2)
    fs = s3fs_client(s3_server)
    assert fs.cat_file(f"{url}/stats.json") == (reference / "stats.json").read_bytes()
    assert shard_objects(s3_server, "options") == []

    losing = pipeline()
    shards = write_shards(losing, execute_batch(losing, [0, 1]), "job-x", "b000001")
    assert shard_urls(s3_server, "options") == [shards["0"]]
    discard_files(list(shards.values()))
    assert shard_objects(s3_server, "options") == []
