"""Reliability mechanisms on real workers: timeouts, retries, crashes, cancel/resume/retry."""

from __future__ import annotations

import json
import time

import pytest

from curator_worker.policy import BatchPolicy, RetryPolicy
from curator_worker.store import CANCELLED, PARTIAL, SUCCEEDED
from producer.control import cancel_job, resume_job, retry_job
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.integration.test_celery_jobs import cli, sequential_stats
from tests.support.specs import stats_spec, write_spec
from tests.support.worker import as_worker_process

pytestmark = pytest.mark.usefixtures("worker_nodes")


def faulty_spec(tmp, count, name, **params):
    spec = stats_spec(tmp, count)
    spec["source"]["name"] = name
    spec["source"]["module"] = "tests.support.faulty"
    spec["source"]["params"].update(params)
    return spec


def wait(store, settings, job_id, timeout=120):
    return wait_for_job(store, job_id, settings=settings, progress=False, timeout=timeout)


@pytest.fixture()
def inline_settings(store, cluster_settings, monkeypatch):
    """Settings of a queue no worker consumes: this process plays the workers
    (``tasks.process_batch``), so the order of events is certain."""
    from dataclasses import replace
    from uuid import uuid4

    settings = replace(cluster_settings, queue=f"inline-{uuid4().hex[:8]}")
    with as_worker_process(store, monkeypatch):
        yield settings
    store.client.delete(settings.queue)


def test_hung_index_times_out_and_the_batch_goes_on(tmp_path, store, cluster_settings):
    spec = faulty_spec(tmp_path, 30, "HangingArrays", hang="4,17", hang_s=60.0)
    options = BatchPolicy(index_timeout=1.0).as_options()
    job = submit_job(spec, cluster_settings, batch_size=10, options=options)
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == PARTIAL and (status.done, status.failed) == (28, 2)
    failures = store.failures(job.job_id)
    assert sorted(failures) == [4, 17]
    assert {f["kind"] for f in failures.values()} == {"timeout"}
    ok = [i for i in range(30) if i not in (4, 17)]
    assert (tmp_path / "stats.json").read_bytes() == sequential_stats(
        tmp_path, stats_spec(tmp_path, 30), ok)


def test_memory_hog_index_fails_with_memory_kind(tmp_path, store, cluster_settings):
    spec = faulty_spec(tmp_path, 12, "HangingArrays", hog="5", hog_mb=8192)
    options = BatchPolicy(index_memory_mb=1024).as_options()
    job = submit_job(spec, cluster_settings, batch_size=6, options=options)
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == PARTIAL and status.failed == 1
    assert store.failures(job.job_id)[5]["kind"] == "memory"


def test_batch_time_limit_records_unfinished_indices(tmp_path, store, cluster_settings):
    spec = faulty_spec(tmp_path, 10, "HangingArrays", hang="3", hang_s=60.0)
    options = BatchPolicy(batch_time_limit=1.5).as_options()
    job = submit_job(spec, cluster_settings, batch_size=10, options=options)
    status = wait(store, cluster_settings, job.job_id)
    failures = store.failures(job.job_id)
    assert sorted(failures) == list(range(3, 10))
    assert {f["kind"] for f in failures.values()} == {"batch_time_limit"}
    assert status.done == 3


def test_transient_errors_are_retried_with_attempts_recorded(tmp_path, store,
                                                              cluster_settings):
    state = tmp_path / "state"
    state.mkdir()
    spec = faulty_spec(tmp_path, 20, "FlakyArrays", flaky="2,9", fail_times=2,
                       state_dir=str(state))
    policy = BatchPolicy(retry=RetryPolicy(retries=3, backoff=0.05))
    job = submit_job(spec, cluster_settings, batch_size=5, options=policy.as_options())
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == SUCCEEDED
    results = store.results(job.job_id, [2, 9, 3])
    assert [r.get("tries", 1) for r in results] == [3, 3, 1]
    assert (tmp_path / "stats.json").read_bytes() == sequential_stats(
        tmp_path, stats_spec(tmp_path, 20))


def test_transient_errors_without_retries_fail(tmp_path, store, cluster_settings):
    state = tmp_path / "state"
    state.mkdir()
    spec = faulty_spec(tmp_path, 6, "FlakyArrays", flaky="1", state_dir=str(state))
    job = submit_job(spec, cluster_settings, batch_size=6)
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == PARTIAL and store.failures(job.job_id)[1]["type"] == "OSError"


def test_crashing_index_is_blamed_and_the_rest_succeed(tmp_path, store, cluster_settings):
    spec = faulty_spec(tmp_path, 8, "CrashingArrays", crash="5")
    job = submit_job(spec, cluster_settings, batch_size=8)
    status = wait(store, cluster_settings, job.job_id, timeout=180)
    assert status.state == PARTIAL and (status.done, status.failed) == (7, 1)
    failure = store.failures(job.job_id)[5]
    assert failure["kind"] == "crash" and "worker process died" in failure["message"]
    ok = [i for i in range(8) if i != 5]
    assert (tmp_path / "stats.json").read_bytes() == sequential_stats(
        tmp_path, stats_spec(tmp_path, 8), ok)


def test_retry_reruns_only_failed_indices_after_the_cause_is_fixed(
        tmp_path, store, cluster_settings):
    flag = tmp_path / "fixed"
    spec = faulty_spec(tmp_path, 40, "BrokenUntilFixed", broken="3,22,23",
                       fixed_flag=str(flag))
    job = submit_job(spec, cluster_settings, batch_size=8)
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == PARTIAL and status.failed == 3
    first_results = store.results(job.job_id, [0, 1])
    flag.write_text("fixed")
    assert retry_job(cluster_settings, job.job_id) == 3
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == SUCCEEDED and (status.done, status.failed) == (40, 0)
    assert store.results(job.job_id, [0, 1]) == first_results, "only failed indices rerun"
    assert (tmp_path / "stats.json").read_bytes() == sequential_stats(
        tmp_path, stats_spec(tmp_path, 40))
    assert not (tmp_path / "stats.json.shards").exists()


def test_cancel_stops_the_job_and_resume_finishes_it(tmp_path, store, cluster_settings):
    spec = stats_spec(tmp_path, 60)
    spec["source"]["params"]["sleep_ms"] = 50
    job = submit_job(spec, cluster_settings, batch_size=5)
    deadline = time.monotonic() + 30
    while store.status(job.job_id).committed_batches < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancel_job(cluster_settings, job.job_id) == "running"
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == CANCELLED and status.committed_batches < status.n_batches
    # let the skipped messages drain, then resume only what is not committed
    time.sleep(2)
    committed_before = status.committed_batches
    sent = resume_job(cluster_settings, job.job_id)
    assert sent == status.n_batches - store.status(job.job_id).committed_batches
    assert sent > 0 and committed_before >= 1
    status = wait(store, cluster_settings, job.job_id)
    assert status.state == SUCCEEDED and status.done == 60, status
    assert (tmp_path / "stats.json").read_bytes() == sequential_stats(tmp_path, spec)


def test_broker_unreachable_is_a_quick_clear_error(tmp_path):
    spec_path = write_spec(tmp_path / "job.yaml", stats_spec(tmp_path, 5))
    started = time.monotonic()
    done = cli(["curator-submit", str(spec_path)],
               {"CURATOR_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0"})
    assert time.monotonic() - started < 5 + 3  # 5 s budget plus interpreter start
    assert done.returncode == 2
    assert "127.0.0.1:1" in done.stderr and "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_cli_job_control_commands(tmp_path, store, cluster_settings, cluster_env):
    spec = stats_spec(tmp_path, 10, fail_indices="4")
    job = submit_job(spec, cluster_settings, batch_size=5)
    wait(store, cluster_settings, job.job_id)
    listed = cli(["curator-jobs", "list", "--json"], cluster_env)
    assert listed.returncode == 0
    assert job.job_id in [j["job_id"] for j in json.loads(listed.stdout)]
    assert cli(["curator-jobs", "cancel", job.job_id], cluster_env).stdout.count("already ended")
    retried = cli(["curator-jobs", "retry", job.job_id, "--wait"], cluster_env)
    assert retried.returncode == 1, retried.stderr  # the cause is not fixed: still partial
    assert "retrying 1 failed indices" in retried.stdout
    missing = cli(["curator-jobs", "status", "no-such-job"], cluster_env)
    assert missing.returncode == 2 and "No job 'no-such-job'" in missing.stderr


def test_run_pipeline_celery_forwards_the_job_policy(tmp_path, cluster_settings, store):
    from curator_worker import JobFailedError, run_pipeline
    from curator_worker.contract.spec import build_pipeline

    pipeline = build_pipeline(faulty_spec(tmp_path, 6, "HangingArrays", hang="2", hang_s=60.0))
    with pytest.raises(JobFailedError) as info:
        run_pipeline(pipeline, backend="celery", broker_url=cluster_settings.broker_url,
                     queue=cluster_settings.queue, index_timeout=1.0, timeout=60)
    assert list(info.value.failures) == [2] and "timeout" in info.value.failures[2]
    with pytest.raises(TypeError, match="index_timout"):
        run_pipeline(pipeline, backend="celery", broker_url=cluster_settings.broker_url,
                     index_timout=1.0)


def test_a_late_chord_gather_cannot_finish_a_retried_job_early(
        tmp_path, store, inline_settings, monkeypatch):
    """The last batch gathers at once; the chord's own gather may arrive after a retry.

    Batches run in this process, so the order is certain: job ends partial, retry is
    sent, the first chord's gather arrives, then the retry batch.
    """
    from curator_worker.gather import gather_job
    from curator_worker.store import RUNNING, JobStore
    from curator_worker.worker import tasks

    flag = tmp_path / "fixed"
    spec = faulty_spec(tmp_path, 8, "BrokenUntilFixed", broken="3", fixed_flag=str(flag))
    job = submit_job(spec, inline_settings, batch_size=4)
    for key, indices in sorted(store.batches(job.job_id).items()):
        tasks.process_batch(store, job.job_id, key, indices, "inline@test")
    assert store.status(job.job_id).state == PARTIAL, "the last batch gathered"
    flag.write_text("fixed")
    pipeline = tasks.pipeline_for_job(job.job_id)
    real_add_batches = JobStore.add_batches

    def late_callback_first(self, job_id, batches):  # it arrives during the retry
        gather_job(store, job_id, pipeline)
        real_add_batches(self, job_id, batches)

    monkeypatch.setattr(JobStore, "add_batches", late_callback_first)
    assert retry_job(inline_settings, job.job_id) == 1
    gather_job(store, job.job_id, pipeline)  # or after it
    assert store.status(job.job_id).state == RUNNING
    (key, indices), = store.uncommitted(job.job_id).items()
    tasks.process_batch(store, job.job_id, key, indices, "inline@test")
    status = store.status(job.job_id)
    assert status.state == SUCCEEDED and (status.done, status.failed) == (8, 0)


def test_shards_are_gone_when_success_shows_and_a_second_gather_keeps_it(
        tmp_path, store, inline_settings, monkeypatch):
    """Gather removes a succeeded job's shards before its state says so; a gather that
    runs again (the first died between the two) does not merge the missing shards."""
    from curator_worker.gather import gather_job
    from curator_worker.store import RUNNING, JobStore
    from curator_worker.worker import tasks

    job = submit_job(stats_spec(tmp_path, 8), inline_settings, batch_size=4)
    shards = tmp_path / "stats.json.shards"
    seen: list[tuple[str, bool]] = []
    real_set_state = JobStore.set_state

    def recording_set_state(self, job_id, state, **fields):
        seen.append((state, shards.exists()))
        real_set_state(self, job_id, state, **fields)

    monkeypatch.setattr(JobStore, "set_state", recording_set_state)
    for key, indices in sorted(store.batches(job.job_id).items()):
        tasks.process_batch(store, job.job_id, key, indices, "inline@test")
    assert seen == [(SUCCEEDED, False)], "shards removed before the state is set"
    merged = (tmp_path / "stats.json").read_bytes()
    assert merged == sequential_stats(tmp_path, stats_spec(tmp_path, 8))
    # as if that gather died after removing the shards, before setting the state
    store.client.hset(store.key(job.job_id), "state", RUNNING)
    assert gather_job(store, job.job_id, tasks.pipeline_for_job(job.job_id)) == SUCCEEDED
    assert (tmp_path / "stats.json").read_bytes() == merged
    assert store.status(job.job_id).error is None


def test_batches_of_a_job_that_ended_failed_do_not_run(tmp_path, store, inline_settings):
    """A job a failed publish ended ``failed`` keeps its counters: its batches already on
    the queue are skipped, uncommitted, and ``resume`` runs them later."""
    from curator_worker.store import FAILED
    from curator_worker.worker import tasks

    spec = stats_spec(tmp_path, 8)
    job = submit_job(spec, inline_settings, batch_size=4)
    assert store.set_state(job.job_id, FAILED)  # as submit does when publishing fails
    for key, indices in sorted(store.batches(job.job_id).items()):
        assert tasks.process_batch(store, job.job_id, key, indices, "inline@test") == key
    status = store.status(job.job_id)
    assert (status.state, status.done, status.failed, status.committed_batches) == (
        FAILED, 0, 0, 0)
    assert not (tmp_path / "stats.json").exists()
    assert resume_job(inline_settings, job.job_id) == 2
    for key, indices in sorted(store.uncommitted(job.job_id).items()):
        tasks.process_batch(store, job.job_id, key, indices, "inline@test")
    status = store.status(job.job_id)
    assert (status.state, status.done, status.failed) == (SUCCEEDED, 8, 0)
