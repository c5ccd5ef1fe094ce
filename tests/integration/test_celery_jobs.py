"""End to end on a real Redis and two real Celery worker nodes (see tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curator_worker import JobFailedError, run_pipeline
from curator_worker.config import Settings
from curator_worker.contract.spec import build_pipeline
from curator_worker.store import PARTIAL, SUCCEEDED, JobStore
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.support.cluster import REPO
from tests.support.specs import stats_spec, write_spec

pytestmark = pytest.mark.usefixtures("worker_nodes")

BIN = Path(sys.executable).parent


def sequential_stats(tmp: Path, spec: dict, indices: list[int] | None = None) -> bytes:
    """The FieldStats file of a sequential run of ``spec`` (outputs moved under ``tmp``)."""
    seq_spec = json.loads(json.dumps(spec))
    seq_spec["filters"][0]["params"]["output"] = str(tmp / "seq-stats.json")
    for key in ("output_dir",):
        if key in seq_spec["sink"]["params"]:
            seq_spec["sink"]["params"][key] = str(tmp / "seq-out")
    pipeline = build_pipeline(seq_spec)
    run_pipeline(pipeline, backend="sequential", indices=indices)
    return (tmp / "seq-stats.json").read_bytes()


def run_job(store: JobStore, settings: Settings, spec: dict, **kwargs) -> tuple[str, object]:
    job = submit_job(spec, settings, **kwargs)
    status = wait_for_job(store, job.job_id, settings=settings, progress=False, timeout=120)
    return job.job_id, status


def cli(args: list[str], env: dict[str, str], cwd: Path | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=full, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_stateful_job_merged_result_equals_sequential(tmp_path, store, cluster_settings):
    spec = stats_spec(tmp_path / "cel", 300)
    job_id, status = run_job(store, cluster_settings, spec, batch_size=13)
    assert status.state == SUCCEEDED, store.failures(job_id)
    assert (status.done, status.failed, status.total) == (300, 0, 300)
    merged = (tmp_path / "cel" / "stats.json").read_bytes()
    assert merged == sequential_stats(tmp_path, spec)
    assert json.loads(merged)["items"] == 300
    assert len(list((tmp_path / "cel" / "arrays").glob("*.npz"))) == 300
    assert not (tmp_path / "cel" / "stats.json.shards").exists(), "shards must be removed"
    nodes = {r["node"] for r in store.commit_records(job_id).values()}
    assert nodes == {"w1@test-host-a", "w2@test-host-b"}, "both worker nodes take batches"


@pytest.mark.parametrize("batch_size, expected_batches", [(1, 40), (7, 6), (None, None)])
def test_per_index_and_per_batch_granularity(tmp_path, store, cluster_settings, batch_size,
                                             expected_batches):
    spec = stats_spec(tmp_path, 40)
    job = submit_job(spec, cluster_settings, batch_size=batch_size)
    status = wait_for_job(store, job.job_id, settings=cluster_settings, progress=False,
                          timeout=120)
    assert status.state == SUCCEEDED
    if expected_batches is not None:
        assert job.n_batches == expected_batches == status.committed_batches
    batches = store.batches(job.job_id)
    assert sorted(i for b in batches.values() for i in b) == list(range(40))
    assert (tmp_path / "stats.json").read_bytes() == sequential_stats(tmp_path, spec)


def test_subset_of_indices_via_cli(tmp_path, cluster_env):
    spec_path = write_spec(tmp_path / "job.yaml", stats_spec(tmp_path / "out", 50))
    done = cli(["curator-submit", str(spec_path), "--indices", "0-9,20", "--wait", "--json"],
               cluster_env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "succeeded" and summary["done"] == 11 == summary["total"]
    written = sorted(p.name for p in (tmp_path / "out" / "arrays").glob("*.npz"))
    assert written == [f"item_{i:08d}.npz" for i in [*range(10), 20]]
    expected = sequential_stats(tmp_path, stats_spec(tmp_path / "out", 50), [*range(10), 20])
    assert (tmp_path / "out" / "stats.json").read_bytes() == expected


def test_failing_index_is_recorded_and_job_is_partial(tmp_path, store, cluster_env,
                                                      cluster_settings):
    spec = stats_spec(tmp_path / "out", 60, fail_indices="7,31")
    spec_path = write_spec(tmp_path / "job.yaml", spec)
    done = cli(["curator-submit", str(spec_path), "--batch-size", "8", "--wait", "--json"],
               cluster_env)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == PARTIAL
    assert (summary["done"], summary["failed"]) == (58, 2)
    assert set(summary["failures"]) == {"7", "31"}
    failures = store.failures(summary["job_id"])
    assert failures[7]["type"] == "RuntimeError"
    assert "synthetic failure at index 7" in failures[7]["message"]
    assert "Traceback" in failures[7]["traceback"] and failures[7]["host"]
    assert failures[7]["attempt"] == 1
    # a failed index contributes nothing: merged stats equal a sequential run without them
    ok = [i for i in range(60) if i not in (7, 31)]
    clean = stats_spec(tmp_path / "out", 60)
    assert (tmp_path / "out" / "stats.json").read_bytes() == sequential_stats(
        tmp_path, clean, ok)
    status = cli(["curator-jobs", "status", summary["job_id"]], cluster_env)
    assert status.returncode == 1
    assert "partial" in status.stdout and "index 7: RuntimeError" in status.stdout


def test_chunked_sink_partitions_never_split(tmp_path, store, cluster_settings):
    spec = stats_spec(tmp_path, 100, chunk_size=8)
    job_id, status = run_job(store, cluster_settings, spec, batch_size=5)
    assert status.state == SUCCEEDED
    for batch in store.batches(job_id).values():
        assert batch == sorted(batch)
    chunk_to_batches: dict[int, set[str]] = {}
    for key, batch in store.batches(job_id).items():
        for i in batch:
            chunk_to_batches.setdefault(i // 8, set()).add(key)
    assert all(len(keys) == 1 for keys in chunk_to_batches.values())
    chunks = sorted((tmp_path / "chunks").glob("*.npz"))
    assert len(chunks) == 13
    with np.load(chunks[-1]) as last:
        assert {k.split("__")[0] for k in last.files} == {f"i{i:08d}" for i in range(96, 100)}
    assert (tmp_path / "stats.json").read_bytes() == sequential_stats(tmp_path, spec)


def test_bad_spec_leaves_the_broker_queue_empty(tmp_path, store, cluster_env):
    spec = stats_spec(tmp_path, 10)
    spec["source"]["params"]["count"] = "ten"
    spec_path = write_spec(tmp_path / "bad.yaml", spec)
    jobs_before = store.client.zcard("curator:jobs")
    queue = "curator-nobody-consumes"
    done = cli(["curator-submit", str(spec_path), "--queue", queue], cluster_env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "bad.yaml" in done.stderr
    assert "count" in done.stderr and "Traceback" not in done.stderr
    assert store.client.llen(queue) == 0
    assert store.client.zcard("curator:jobs") == jobs_before


def test_run_pipeline_celery_matches_sequential(tmp_path, cluster_settings):
    spec = stats_spec(tmp_path / "a", 30)
    pipeline = build_pipeline(spec)
    order = [5, 3, 29, 0, 17, 8]
    got = run_pipeline(pipeline, backend="celery", n_jobs=2, indices=order,
                       broker_url=cluster_settings.broker_url, queue=cluster_settings.queue)
    expected = run_pipeline(pipeline, backend="sequential", indices=order)
    assert got == expected
    assert [Path(p[0]).name for p in got] == [f"item_{i:08d}.npz" for i in order]


def test_run_pipeline_celery_raises_listing_failures(tmp_path, cluster_settings):
    pipeline = build_pipeline(stats_spec(tmp_path, 12, fail_indices="4"))
    with pytest.raises(JobFailedError) as info:
        run_pipeline(pipeline, backend="celery", broker_url=cluster_settings.broker_url,
                     queue=cluster_settings.queue)
    assert info.value.state == PARTIAL and list(info.value.failures) == [4]
    assert "synthetic failure at index 4" in str(info.value)


def test_spec_the_workers_cannot_import_fails_the_job(tmp_path, store, cluster_settings,
                                                       monkeypatch):
    """Systemic failure: the producer can build the spec, the workers cannot."""
    module = tmp_path / "producer_only_components.py"
    module.write_text(
        "from curator_worker.components.sources import SyntheticArrays\n\n"
        "class LocalArrays(SyntheticArrays):\n"
        "    name = 'LocalArrays'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = stats_spec(tmp_path, 20)
    spec["source"].update(name="LocalArrays", module="producer_only_components")
    job_id, status = run_job(store, cluster_settings, spec, batch_size=5)
    assert status.state == "failed" and status.exit_code() == 2
    assert "cannot import module 'producer_only_components'" in status.error
    assert status.failed == 20


def test_automatic_batch_size_follows_the_live_workers(tmp_path, store, cluster_settings):
    """Two nodes of two processes: four shrinking rounds of one batch per process."""
    job = submit_job(stats_spec(tmp_path, 160), cluster_settings)
    assert (job.batch_size, job.n_batches) == (20, 16)
    planned = sorted(store.batches(job.job_id).items())
    assert [len(ix) for _, ix in planned] == [20] * 4 + [10] * 4 + [5] * 8
    hinted = submit_job(stats_spec(tmp_path / "h", 160), cluster_settings, n_workers_hint=1)
    assert (hinted.batch_size, hinted.n_batches) == (80, 4)
    for submitted in (job, hinted):
        status = wait_for_job(store, submitted.job_id, settings=cluster_settings,
                              progress=False, timeout=120)
        assert status.state == SUCCEEDED


def test_a_finished_job_leaves_its_cost_and_spread_per_index(store) -> None:
    """Seconds per index over all batches, and how much the batches' rates differ."""
    job_id = "cost-spread-test"
    committed = store.key(job_id, "committed")
    store.client.delete(committed)
    store.client.hset(committed, mapping={
        "b0": json.dumps({"started": 10.0, "finished": 11.0, "n": 10}),  # 0.1 s per index
        "b1": json.dumps({"started": 10.0, "finished": 13.0, "n": 10}),  # 0.3 s per index
        "b2": json.dumps({"started": 10.0, "n": 5}),  # never finished: not timed
    })
    try:
        cost = store.remember_index_cost(job_id, "spread-digest")
        assert cost is not None and cost.seconds == pytest.approx(0.2)
        assert cost.spread == pytest.approx(0.5)  # rates 0.1 and 0.3 around 0.2
        assert store.index_cost("spread-digest") == cost
        store.client.hset(committed, "b1", json.dumps({"started": 10.0, "finished": 11.0,
                                                       "n": 10}))
        assert store.remember_index_cost(job_id, "spread-digest").spread == pytest.approx(0)
        store.client.set("curator:spec:spread-digest:cost", "0.25")  # seconds only
        assert store.index_cost("spread-digest") == (0.25, None)
        store.client.set("curator:spec:spread-digest:cost", "garbage")
        assert store.index_cost("spread-digest") is None
    finally:
        store.client.delete(committed, "curator:spec:spread-digest:cost")


def test_the_next_job_of_a_spec_sizes_batches_from_its_cost_per_index(
        tmp_path, store, cluster_settings):
    """A finished job leaves its seconds per index; cheap indices then get fewer batches."""
    from curator_worker.contract.spec import spec_hash

    spec = stats_spec(tmp_path, 160)
    digest = spec_hash(spec)
    assert store.index_cost(digest) is None
    first = submit_job(spec, cluster_settings)
    status = wait_for_job(store, first.job_id, settings=cluster_settings, progress=False,
                          timeout=120)
    assert status.state == SUCCEEDED and first.n_batches == 16
    measured = store.index_cost(digest)
    assert measured is not None and 0 < measured.seconds < 5.0
    assert measured.spread is not None and measured.spread >= 0
    # As if its indices took a microsecond each: one batch per live worker process (4).
    store.client.set(f"curator:spec:{digest}:cost", "1e-06")
    second = submit_job(spec, cluster_settings)
    assert (second.n_batches, second.batch_size) == (4, 40)
    # As if they took a second each: the usual four shrinking rounds.
    store.client.set(f"curator:spec:{digest}:cost", json.dumps({"seconds": 1.0, "spread": 0.3}))
    third = submit_job(spec, cluster_settings)
    assert third.n_batches == 16
    # A second each, all alike: two rounds.
    store.client.set(f"curator:spec:{digest}:cost", json.dumps({"seconds": 1.0, "spread": 0.01}))
    fourth = submit_job(spec, cluster_settings)
    assert (fourth.n_batches, fourth.batch_size) == (8, 20)
    # 100 s each: batches stay under a third of the visibility timeout (3600 s here)
    store.client.set(f"curator:spec:{digest}:cost", json.dumps({"seconds": 100.0, "spread": 0.3}))
    fifth = submit_job(spec, cluster_settings)
    assert fifth.batch_size == 12 and fifth.n_batches > 16
    for job in (second, third, fourth, fifth):
        status = wait_for_job(store, job.job_id, settings=cluster_settings, progress=False,
                              timeout=120)
        assert status.state == SUCCEEDED
