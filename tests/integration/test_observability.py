"""What users see of a job: log context, metrics, status timings, progress lines, list."""

from __future__ import annotations

import json

import pytest

from curator_worker import Job
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.integration.test_celery_jobs import cli
from tests.support.specs import stats_spec, write_spec

pytestmark = pytest.mark.usefixtures("worker_nodes")


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, cluster_settings):
    from curator_worker.store import JobStore

    tmp = tmp_path_factory.mktemp("observed")
    store = JobStore.from_url(cluster_settings.effective_job_store_url)
    spec = stats_spec(tmp, 80, fail_indices="13")
    job = submit_job(spec, cluster_settings, batch_size=10,
                     options={"metrics": True, "trace_memory": True})
    wait_for_job(store, job.job_id, settings=cluster_settings, progress=False, timeout=120)
    return job.job_id, Job(job.job_id, store)


def test_worker_log_lines_carry_job_batch_and_index(finished_job, worker_nodes):
    job_id, _ = finished_job
    logs = "\n".join(node.log.read_text(errors="replace") for node in worker_nodes)
    # the nodes are shared: other tests' jobs fail their index 13 too
    failed = [line for line in logs.splitlines()
              if "index 13 failed" in line and f"job={job_id} " in line]
    assert failed, "the failure is logged"
    assert f"[job={job_id} batch=b000001 index=13]" in failed[0]
    started = [line for line in logs.splitlines() if f"job {job_id} batch b000000:" in line]
    assert started and f"[job={job_id} batch=b000000]" in started[0]


def test_job_metrics_per_index(finished_job):
    _, job = finished_job
    metrics = job.metrics()
    assert [m["index"] for m in metrics] == list(range(80))
    ok = [m for m in metrics if m["ok"]]
    assert len(ok) == 79 and not metrics[13]["ok"]
    assert metrics[13]["error"]["type"] == "RuntimeError"
    stages = set(ok[0]["stages"])
    assert stages == {"source", "filter[0]:FieldStats", "sink"}
    for m in ok:
        assert m["seconds"] > 0 and m["end"] and m["pid"] and m["host"]
        assert m["node"] in {"w1@test-host-a", "w2@test-host-b"}
        assert m["attempt"] == 1 and m["tries"] == 1 and m["peak_mb"] > 0
        assert sum(m["stages"].values()) <= m["seconds"] * 1.05 + 1e-3
    batches = job.batches()
    assert len(batches) == 8 and all(b["finished"] >= b["started"] for b in batches)


def test_status_shows_counts_failures_and_timings(finished_job, cluster_env):
    job_id, _ = finished_job
    done = cli(["curator-jobs", "status", job_id], cluster_env)
    assert done.returncode == 1
    assert "partial" in done.stdout and "79 succeeded, 1 failed" in done.stdout
    assert "index 13: RuntimeError: synthetic failure at index 13" in done.stdout
    assert "indices/s" in done.stdout and "filter[0]:FieldStats" in done.stdout
    as_json = json.loads(cli(["curator-jobs", "status", job_id, "--json"], cluster_env).stdout)
    assert as_json["timings"]["worker_processes"] >= 2
    assert set(as_json["timings"]["stage_seconds"]) == {"source", "filter[0]:FieldStats",
                                                        "sink"}


def test_wait_prints_plain_progress_lines_when_not_a_tty(tmp_path, cluster_env):
    spec = stats_spec(tmp_path, 60)
    spec["source"]["params"]["sleep_ms"] = 100
    spec_path = write_spec(tmp_path / "job.yaml", spec)
    submitted = cli(["curator-submit", str(spec_path), "--batch-size", "5"], cluster_env)
    job_id = submitted.stdout.strip()
    assert submitted.returncode == 0 and job_id
    waited = cli(["curator-jobs", "wait", job_id], cluster_env)
    assert waited.returncode == 0, waited.stderr
    lines = [line for line in waited.stderr.splitlines() if line.startswith(f"job {job_id}:")]
    assert lines and "/60 (" in lines[0] and "eta" in lines[0]
    assert any("workers" in line for line in lines)
    assert lines[-1].startswith(f"job {job_id}: 60/60 (60 done, 0 failed)")
    assert "succeeded" in waited.stdout
