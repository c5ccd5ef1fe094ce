"""What a new user trips on in the first hour (issue 18), driven as they would: the CLI in
a subprocess or the Python API, against the embedded default or the test cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import curator_worker.components.sources as sources
from curator_worker import JobFailedError, run_pipeline
from curator_worker.components import FieldStats, NpzPerIndex, SyntheticArrays
from curator_worker.config import Settings
from curator_worker.errors import JobWaitTimeout
from curator_worker.messaging import create_app
from curator_worker.store import CANCELLED, PARTIAL
from producer.control import cancel_job
from producer.submit import submit_job
from producer.wait import live_progress, wait_for_job
from tests.support.cluster import REPO, WorkerNode, sigint_as_default, wait_until_ready
from tests.support.specs import stats_spec, write_spec

BIN = Path(sys.executable).parent


def cli(args: list[str], env: dict[str, str], timeout: float = 180,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("CURATOR_") or k == "CURATOR_DB_DIR"}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=full, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def wait(store, settings: Settings, job_id: str):
    return wait_for_job(store, job_id, settings=settings, progress=False, timeout=120)


# --------------------------------------------------------------------------- embedded


def test_embedded_summary_sends_nobody_to_curator_jobs(tmp_path: Path) -> None:
    spec = stats_spec(tmp_path / "out", 30, fail_indices=",".join(map(str, range(3, 23))))
    spec_path = write_spec(tmp_path / "job.yaml", spec)
    done = cli(["curator-submit", str(spec_path), "--workers", "2", "--batch-size", "10"], {})
    assert done.returncode == 1, done.stderr
    assert "curator-jobs" not in done.stdout.replace("`curator-jobs` cannot", "")
    assert "embedded cluster" in done.stdout and "CURATOR_BROKER_URL" in done.stdout
    # the twenty failures with one error are one line, with their indices as ranges
    assert "20 indices (3-22): RuntimeError: synthetic failure at index <n>" in done.stdout
    assert done.stdout.count("synthetic failure") == 1


def test_embedded_progress_never_asks_the_user_to_start_a_worker(tmp_path: Path) -> None:
    # the command is back in ~0.1 s and submits while the embedded node still boots: its
    # progress must not say "no worker listens ... start one with curator-worker"
    spec_path = write_spec(tmp_path / "job.yaml", stats_spec(tmp_path / "out", 4))
    done = cli(["curator-submit", str(spec_path), "--workers", "1"], {})
    assert done.returncode == 0, done.stderr
    assert "curator-worker" not in done.stderr and "no worker listens" not in done.stderr


@pytest.mark.usefixtures("clean_env")
def test_embedded_job_failed_error_says_what_to_do_instead(tmp_path: Path) -> None:
    pipeline = SyntheticArrays(count=6, size=4, fail_indices="1,2,3").write(
        NpzPerIndex(output_dir=str(tmp_path / "out")))
    with pytest.raises(JobFailedError) as info:
        run_pipeline(pipeline, backend="celery", n_jobs=1, progress=False)
    message = str(info.value)
    assert "curator-jobs status" not in message and "curator-jobs failures" not in message
    assert "embedded cluster" in message and "CURATOR_BROKER_URL" in message
    assert "3 failed indices: RuntimeError: synthetic failure at index <n> (indices 1-3)" \
        in message
    assert set(info.value.failures) == {1, 2, 3}


@pytest.mark.usefixtures("clean_env")
def test_an_unfinished_embedded_job_leaves_no_shards(tmp_path: Path) -> None:
    pipeline = (SyntheticArrays(count=6, size=4, sleep_ms=1500)
                .filter(FieldStats(output=str(tmp_path / "stats.json")))
                .write(NpzPerIndex(output_dir=str(tmp_path / "arrays"))))
    with pytest.raises(JobWaitTimeout):
        run_pipeline(pipeline, backend="celery", n_jobs=1, batch_size=1, timeout=6,
                     progress=False)
    assert list((tmp_path / "arrays").glob("*.npz")), "some batches committed (and shards)"
    assert not (tmp_path / "stats.json.shards").exists()
    assert not (tmp_path / "stats.json").exists()


def test_ctrl_c_on_an_embedded_wait_says_the_job_stops_with_it(tmp_path: Path) -> None:
    spec = stats_spec(tmp_path / "out", 8)
    spec["source"]["params"]["sleep_ms"] = 2000
    spec_path = write_spec(tmp_path / "job.yaml", spec)
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("CURATOR_") or k == "CURATOR_DB_DIR"}
    full.update(PYTHONPATH=str(REPO))
    proc = subprocess.Popen([str(BIN / "curator-submit"), str(spec_path), "--workers", "1",
                             "--batch-size", "1"], env=full, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "out").glob("stats.json.shards/*/*")):
            assert time.monotonic() < deadline and proc.poll() is None, "no batch committed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stops with the embedded cluster of this command" in err
    assert "curator-jobs" not in err and "aborted" not in err
    assert not (tmp_path / "out" / "stats.json.shards").exists()


# --------------------------------------------------------------------------- the cluster

cluster = pytest.mark.usefixtures("worker_nodes")


@cluster
def test_status_of_a_running_job_shows_live_progress(tmp_path, store, cluster_settings,
                                                     cluster_env) -> None:
    spec = stats_spec(tmp_path, 40)
    spec["source"]["params"]["sleep_ms"] = 150
    job = submit_job(spec, cluster_settings, batch_size=40)  # one batch: nothing committed
    try:
        deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < deadline:
            done = cli(["curator-jobs", "status", job.job_id, "--json"], cluster_env)
            data = json.loads(done.stdout)
            if data["state"] == "running" and data["live"]["processed"] >= 3:
                seen = data
                break
            time.sleep(0.3)
        assert seen is not None, "status never showed live progress"
        assert seen["done"] == 0 and seen["committed_batches"] == 0
        assert seen["live"]["workers"] == 1
        text = cli(["curator-jobs", "status", job.job_id], cluster_env).stdout
        assert "running: 0/40" not in text
        assert "indices processed" in text and "workers 1" in text
    finally:
        wait(store, cluster_settings, job.job_id)


@cluster
def test_a_class_the_workers_lack_says_they_run_older_code(
        tmp_path, store, cluster_settings, monkeypatch) -> None:
    class NewArrays(sources.SyntheticArrays):
        name = "NewArrays"

    NewArrays.__module__ = sources.__name__
    # the producer has the new class; the running workers imported the module before it
    monkeypatch.setattr(sources, "NewArrays", NewArrays, raising=False)
    spec = stats_spec(tmp_path, 6)
    spec["source"]["name"] = "NewArrays"
    job = submit_job(spec, cluster_settings, batch_size=3)
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == "failed"
    assert "no class named 'NewArrays'" in status.error
    assert "restart the workers" in status.error
    failure = store.failures(job.job_id)[0]
    assert "restart the workers (curator-worker) so they run the new code" in failure["message"]


@cluster
def test_retry_shows_its_own_progress_and_is_in_the_history(
        tmp_path, store, cluster_settings, cluster_env) -> None:
    spec = stats_spec(tmp_path, 40, fail_indices=",".join(map(str, range(4, 17))))
    job = submit_job(spec, cluster_settings, batch_size=5)
    assert wait(store, cluster_settings, job.job_id).state == PARTIAL
    status = cli(["curator-jobs", "status", job.job_id], cluster_env)
    assert "13 indices (4-16): RuntimeError: synthetic failure at index <n>" in status.stdout
    assert f"curator-jobs failures {job.job_id}" in status.stdout
    assert f"curator-jobs status {job.job_id}" not in status.stdout
    assert status.stdout.count("synthetic failure") == 1
    retried = cli(["curator-jobs", "retry", job.job_id, "--wait"], cluster_env)
    assert retried.returncode == 1, retried.stderr  # the cause is not fixed: still partial
    progress = [line for line in retried.stderr.splitlines() if f"job {job.job_id}" in line]
    assert progress and all(f"job {job.job_id} retry 1: " in line for line in progress), \
        retried.stderr
    assert "13/13 (0 done, 13 failed)" in progress[-1]
    assert "40/40" not in retried.stderr
    shown = cli(["curator-jobs", "status", job.job_id], cluster_env).stdout
    assert "pipeline: SyntheticArrays → FieldStats → NpzPerIndex" in shown
    assert "source SyntheticArrays(count=40" in shown
    assert "retry 1: 13 indices in" in shown
    listed = cli(["curator-jobs", "list"], cluster_env).stdout
    row = next(line for line in listed.splitlines() if line.startswith(job.job_id))
    assert row.endswith("SyntheticArrays → FieldStats → NpzPerIndex")
    history = json.loads(cli(["curator-jobs", "status", job.job_id, "--json"],
                             cluster_env).stdout)["history"]
    assert [(e["action"], e["round"], e["indices"]) for e in history] == [("retry", 1, 13)]
    assert history[0]["batches"] >= 1 and history[0]["at"] > 0
    resumed = cli(["curator-jobs", "resume", job.job_id, "--wait"], cluster_env)
    assert resumed.returncode == 1, resumed.stderr
    shown = cli(["curator-jobs", "status", job.job_id], cluster_env).stdout
    assert "resume: every batch was committed; gather re-sent" in shown
    assert shown.index("retry 1:") < shown.index("resume:"), "oldest first"
    report = cli(["curator-jobs", "report", job.job_id, "--out", str(tmp_path / "report")],
                 cluster_env)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Pipeline</h2>" in page
    assert "SyntheticArrays → FieldStats → NpzPerIndex" in page
    assert "count=40" in page and "retry 1: 13 indices in" in page and "resume:" in page


@cluster
def test_ctrl_c_on_wait_says_the_job_goes_on(tmp_path, store, cluster_settings,
                                             cluster_env) -> None:
    spec = stats_spec(tmp_path, 20)
    spec["source"]["params"]["sleep_ms"] = 1000
    job = submit_job(spec, cluster_settings, batch_size=5)
    full = {k: v for k, v in os.environ.items() if not k.startswith("CURATOR_")}
    full.update(cluster_env, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([str(BIN / "curator-jobs"), "wait", job.job_id], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_as_default)
    try:
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        cancel_job(cluster_settings, job.job_id)
    assert proc.returncode == 130
    assert f"job {job.job_id} keeps running on the cluster" in err
    assert f"curator-jobs wait {job.job_id}" in err and f"curator-jobs cancel {job.job_id}" in err
    assert "aborted" not in err
    assert wait(store, cluster_settings, job.job_id).state == CANCELLED


@cluster
def test_celery_on_error_collect_returns_the_failures(tmp_path, cluster_settings) -> None:
    pipeline = SyntheticArrays(count=8, size=4, fail_indices="2,5").write(
        NpzPerIndex(output_dir=str(tmp_path / "out")))
    result = run_pipeline(pipeline, backend="celery", broker_url=cluster_settings.broker_url,
                          queue=cluster_settings.queue, batch_size=3, on_error="collect",
                          progress=False)
    assert result[2] == [] and result[5] == [] and len(result[0]) == 1
    assert result.failures == {2: "RuntimeError: synthetic failure at index 2",
                               5: "RuntimeError: synthetic failure at index 5"}
    assert "Traceback" in result.errors[2]["traceback"]
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'collect'"):
        run_pipeline(pipeline, backend="celery", broker_url=cluster_settings.broker_url,
                     on_error="ignore")


@cluster
def test_a_queue_nobody_listens_on_says_how_to_start_a_worker(tmp_path, store,
                                                               cluster_settings,
                                                               cluster_env) -> None:
    lonely = Settings(broker_url=cluster_settings.broker_url, queue="nobody-listens",
                      visibility_timeout=3600)
    job = submit_job(stats_spec(tmp_path, 4), lonely, batch_size=2)
    try:
        shown = cli(["curator-jobs", "status", job.job_id], cluster_env).stdout
    finally:
        cancel_job(cluster_settings, job.job_id)
    assert "no worker listens on queue nobody-listens" in shown
    assert "curator-worker -Q nobody-listens" in shown


def test_workers_counts_live_processes_not_restarted_ones(tmp_path, store, cluster_settings,
                                                          tmp_path_factory) -> None:
    queue = "recycling"
    env = {**cluster_settings.environ(), "CURATOR_QUEUE": queue}
    node = WorkerNode(env, "recycler@test-host-c", 1, queue, tmp_path_factory.mktemp("logs"),
                      extra=["--max-tasks-per-child", "1"])
    app = create_app(cluster_settings)
    try:
        wait_until_ready(app, [node.name], [node])
        settings = Settings(broker_url=cluster_settings.broker_url, queue=queue,
                            visibility_timeout=3600)
        job = submit_job(stats_spec(tmp_path, 5), settings, batch_size=1)
        assert wait(store, settings, job.job_id).state == "succeeded"
        seen = store.client.hkeys(store.key(job.job_id, "workers"))
        assert len(seen) >= 3, "each batch ran in a fresh process"
        assert live_progress(store, job.job_id).workers == 1
    finally:
        app.close()
        node.stop()
