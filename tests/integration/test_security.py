"""Security: JSON-only workers, the module allow-list, and passwords never printed.

Runs against the test session's Redis and worker nodes (``tests/conftest.py``); the
allow-list test starts one more worker node of its own on a queue of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kombu import Connection

from curator_worker.config import Settings
from curator_worker.embedded import RedisServer, free_port
from curator_worker.messaging import RUN_BATCH, create_app
from curator_worker.store import FAILED, JobStore
from curator_worker.store.keys import JOBS_INDEX
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.conftest import TEST_QUEUE
from tests.support.cluster import REPO, WorkerNode, wait_until_ready
from tests.support.specs import stats_spec

BIN = Path(sys.executable).parent
REFUSAL = "Refusing to deserialize untrusted content of type pickle"


def run_cli(args: list[str], env: dict[str, str],
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one of the project's commands with ``env`` (the repository on PYTHONPATH)."""
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def faulty_spec(out: Path, count: int) -> dict[str, Any]:
    """A spec whose source lives in ``tests.support.faulty`` (not a built-in module)."""
    spec = stats_spec(out, count)
    spec["source"].update(name="HangingArrays", module="tests.support.faulty")
    return spec


class _CreatesFileWhenUnpickled:
    """Unpickling this object opens ``path`` for writing: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _logs(nodes: list[WorkerNode], since: list[int] | None = None) -> str:
    """The nodes' logs (each from its own offset in ``since``), joined."""
    texts = [node.log.read_text(errors="replace") for node in nodes]
    return "\n".join(t[since[n]:] if since else t for n, t in enumerate(texts))


def _log_sizes(nodes: list[WorkerNode]) -> list[int]:
    return [len(node.log.read_text(errors="replace")) for node in nodes]


# --------------------------------------------------------------------------- JSON only


def test_pickle_task_message_is_refused_and_never_executed(
    tmp_path: Path, store: JobStore, cluster_settings: Settings,
    worker_nodes: list[WorkerNode],
) -> None:
    """A protocol-2 ``curator.run_batch`` message with a pickled body is dropped unread.

    Had a worker unpickled it, the marker file would exist; had it run the task, batch
    ``b000000`` of the job would be committed and its outputs written. Then the same task
    sent as JSON does run, so the checks above are able to fail.
    """
    out = tmp_path / "out"
    spec = {k: v for k, v in stats_spec(out, 3).items() if k != "metadata"}
    job_id = f"security-{uuid.uuid4().hex[:8]}"
    store.create_job(job_id, spec, {"batch_size": 3}, [("b000000", [0, 1, 2])], total=3,
                     queue=TEST_QUEUE)
    marker = tmp_path / "unpickled"
    task_id = str(uuid.uuid4())
    args = (job_id, "b000000", [0, 1, 2])
    body = (args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None,
                       "payload": _CreatesFileWhenUnpickled(marker)})
    headers = {
        "lang": "py", "task": RUN_BATCH, "id": task_id, "root_id": task_id,
        "parent_id": None, "group": None, "retries": 0, "timelimit": [None, None],
        "argsrepr": repr(args), "kwargsrepr": "{}", "origin": "attacker@test",
        "eta": None, "expires": None, "shadow": None, "ignore_result": False,
    }
    logs_before = _log_sizes(worker_nodes)
    with Connection(cluster_settings.broker_url) as conn:
        conn.Producer().publish(body, routing_key=TEST_QUEUE, serializer="pickle",
                                headers=headers, correlation_id=task_id)

    deadline = time.monotonic() + 15
    while REFUSAL not in _logs(worker_nodes, logs_before) and time.monotonic() < deadline:
        time.sleep(0.1)
    refusal = _logs(worker_nodes, logs_before)
    assert REFUSAL in refusal, "no worker logged the content-type refusal"
    assert "application/x-python-serialize" in refusal
    time.sleep(3)  # give a (wrongly) accepted task every chance to run
    status = store.status(job_id)
    assert not marker.exists(), "a worker unpickled the message"
    assert (status.committed_batches, status.done, status.failed) == (0, 0, 0)
    assert not store.client.exists(store.key(job_id, "attempts")), "the task started"
    assert not out.exists()
    pending = store.client.lrange(TEST_QUEUE, 0, -1) + store.client.hvals("unacked")
    assert not any(task_id.encode() in raw for raw in pending), "the message is not dropped"

    # control: the same task as JSON is accepted and runs, and the same checks see it
    app = create_app(cluster_settings)
    try:
        app.send_task(RUN_BATCH, args=args, queue=TEST_QUEUE)
    finally:
        app.close()
    deadline = time.monotonic() + 30
    while store.status(job_id).committed_batches < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.status(job_id).done == 3
    assert len(list((out / "arrays").glob("*.npz"))) == 3
    assert not marker.exists()
    store.cancel(job_id)


# --------------------------------------------------------------------------- allow-list


def test_producer_allow_list_refuses_a_module_outside_it(
    tmp_path: Path, cluster_env: dict[str, str], store: JobStore,
) -> None:
    """``CURATOR_ALLOWED_MODULES`` on the producer: submit exits 2, nothing enqueued."""
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(faulty_spec(tmp_path / "out", 10)))
    queue = "curator-security-allow-list"
    jobs_before = store.client.zcard(JOBS_INDEX)
    env = {**cluster_env, "CURATOR_ALLOWED_MODULES": "acme_pipelines, curator_worker.contrib"}
    done = run_cli(["curator-submit", str(spec_path), "--queue", queue], env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "tests.support.faulty" in lines[0] and "allow-list" in lines[0], lines[0]
    assert "CURATOR_ALLOWED_MODULES" in lines[0]
    assert store.client.llen(queue) == 0
    assert store.client.zcard(JOBS_INDEX) == jobs_before

    # the project's own components stay allowed whatever the list says
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(stats_spec(tmp_path / "own-out", 10)))
    try:
        allowed = run_cli(["curator-submit", str(own), "--queue", queue, "--batch-size", "5"],
                          env)
        assert allowed.returncode == 0, allowed.stderr
        assert store.client.llen(queue) == 2
        store.cancel(allowed.stdout.strip())
    finally:
        store.client.delete(queue)


def test_workers_with_an_allow_list_refuse_a_module_outside_it(
    tmp_path: Path, store: JobStore, cluster_settings: Settings, redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The producer allows the module, the workers do not: the job ends ``failed``."""
    monkeypatch.delenv("CURATOR_ALLOWED_MODULES", raising=False)
    queue = "curator-security-workers"
    settings = dataclasses.replace(cluster_settings, queue=queue)
    name = "allowlist@security-host"
    env = {**settings.environ(), "CURATOR_ALLOWED_MODULES": "curator_worker.components"}
    node = WorkerNode(env, name, 1, queue, tmp_path)
    app = create_app(settings)
    try:
        wait_until_ready(app, [name], [node])
        out = tmp_path / "out"
        job = submit_job(faulty_spec(out, 10), settings, batch_size=5)
        status = wait_for_job(store, job.job_id, settings=settings, progress=False, timeout=60)
        assert status.state == FAILED and status.exit_code() == 2, status
        assert (status.done, status.failed) == (0, 10)
        assert status.error and "allow-list" in status.error, status.error
        assert "tests.support.faulty" in status.error
        assert {e["kind"] for e in store.failures(job.job_id).values()} == {"systemic"}
        assert not (out / "arrays").exists() and not (out / "stats.json").exists()
        shown = run_cli(["curator-jobs", "status", job.job_id], settings.environ())
        assert shown.returncode == 2 and "allow-list" in shown.stdout, shown.stdout
    finally:
        app.close()
        node.stop()
    assert redis_server.password not in node.log.read_text(errors="replace")


# --------------------------------------------------------------------------- passwords


def test_passwords_never_appear_in_cli_output_or_worker_logs(
    tmp_path: Path, cluster_env: dict[str, str], redis_server: RedisServer,
    worker_nodes: list[WorkerNode],
) -> None:
    """Every command, on success and on error, and every worker log: no password."""
    password = redis_server.password
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(stats_spec(tmp_path / "out", 12)))
    wrong = f"redis://:wrong-{password[:6]}-pw@127.0.0.1:{redis_server.port}/0"
    nobody = f"redis://:nobody-{password[:6]}-pw@127.0.0.1:{free_port()}/0"
    texts: dict[str, str] = {}

    def record(label: str, done: subprocess.CompletedProcess[str]) -> None:
        texts[label] = done.stdout + done.stderr

    submitted = run_cli(["curator-submit", str(spec_path), "--batch-size", "4", "--wait",
                         "--json"], cluster_env)
    record("submit --wait --json", submitted)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    record("submit --wait", run_cli(["curator-submit", str(spec_path), "--wait"], cluster_env))
    for args in (["curator-jobs", "status", job_id], ["curator-jobs", "status", job_id, "--json"],
                 ["curator-jobs", "wait", job_id], ["curator-jobs", "list"],
                 ["curator-jobs", "retry", job_id], ["curator-jobs", "status", "no-such-job"]):
        record(" ".join(args), run_cli(args, cluster_env))
    for label, url in (("wrong password", wrong), ("nothing listening", nobody)):
        for args in (["curator-submit", str(spec_path)], ["curator-jobs", "list"]):
            done = run_cli(args, {**cluster_env, "CURATOR_BROKER_URL": url})
            assert done.returncode == 2, done.stderr
            record(f"{label}: {args[0]}", done)
        flag = run_cli(["curator-submit", str(spec_path), "--broker", url], {})
        assert flag.returncode == 2
        record(f"{label}: --broker", flag)
    record("curator-worker", _curator_worker_banner(cluster_env, tmp_path))

    assert "***@127.0.0.1" in texts["wrong password: curator-submit"]
    assert "curator-worker: broker redis://:***@" in texts["curator-worker"]
    logs = {node.name: node.log.read_text(errors="replace") for node in worker_nodes}
    assert all("ready" in text for text in logs.values())
    for label, text in {**texts, **logs}.items():
        for secret in (password, f"wrong-{password[:6]}-pw", f"nobody-{password[:6]}-pw"):
            assert secret not in text, f"a password appears in {label!r}"


def _curator_worker_banner(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Start the real ``curator-worker`` until it is ready, stop it by pid, return its output."""
    log = tmp_path / "curator-worker.log"
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "curator-worker"), "-c", "1", "-n", "banner@security-host",
             "-Q", "curator-security-banner", "--without-mingle", "--without-gossip"],
            env=full, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace") and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = log.read_text(errors="replace")
    assert "ready." in text, text[-2000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, text, "")


# --------------------------------------------------------------------------- job control


def _broken_job(tmp_path: Path, store: JobStore, settings: Settings,
                count: int = 30) -> tuple[str, Path]:
    """A job of 6 batches whose index 7 fails until the returned flag file exists."""
    flag = tmp_path / "fixed"
    spec = stats_spec(tmp_path / "out", count)
    spec["source"].update(name="BrokenUntilFixed", module="tests.support.faulty")
    spec["source"]["params"].update(broken="7", fixed_flag=str(flag))
    job = submit_job(spec, settings, batch_size=5)
    status = wait_for_job(store, job.job_id, settings=settings, progress=False, timeout=120)
    assert status.state == "partial" and status.failed == 1, status
    return job.job_id, flag


def test_a_retry_while_another_holds_the_job_is_refused(
    tmp_path: Path, store: JobStore, cluster_settings: Settings, cluster_env: dict[str, str],
    worker_nodes: list[WorkerNode],
) -> None:
    """Job control is serialised per job: while a retry holds the job's lock, a second
    retry (or resume, or cancel) exits 2 with one line and changes nothing."""
    from producer.joblock import job_control_lock

    job_id, flag = _broken_job(tmp_path, store, cluster_settings)
    flag.write_text("fixed")
    before = store.client.hgetall(store.key(job_id))
    with job_control_lock(store, job_id, "retry"):
        for command in ("retry", "resume", "cancel"):
            done = run_cli(["curator-jobs", command, job_id], cluster_env, timeout=30)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2, done.stderr
            assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
            assert f"another retry of job {job_id} is in progress" in lines[0], lines[0]
    assert store.client.hgetall(store.key(job_id)) == before, "the job record changed"
    # the lock is released: the retry now runs, and the job completes
    done = run_cli(["curator-jobs", "retry", job_id, "--wait"], cluster_env)
    assert done.returncode == 0, done.stderr
    status = store.status(job_id)
    assert status.state == "succeeded" and (status.done, status.failed) == (30, 0)


def test_two_concurrent_retries_of_one_job_complete_it_exactly_once(
    tmp_path: Path, store: JobStore, cluster_settings: Settings, cluster_env: dict[str, str],
    worker_nodes: list[WorkerNode],
) -> None:
    """Two ``curator-jobs retry`` at once: one is accepted, the other exits 2 with one line;
    the job ends succeeded with every batch committed (it used to end ``running``)."""
    job_id, flag = _broken_job(tmp_path, store, cluster_settings)
    flag.write_text("fixed")
    full = {**os.environ, **cluster_env, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([str(BIN / "curator-jobs"), "retry", job_id], env=full, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=60), *p.communicate(timeout=10)) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and "Traceback" not in refused[0], refused
    # the second one met the first one's lock, or its re-sent batches running, or (on a
    # loaded machine, where starting a process takes longer than the retry) found the job
    # already mended: each is one line and leaves the job retried once
    assert (f"another retry of job {job_id} is in progress" in refused[0]
            or "still running" in refused[0]
            or f"Job {job_id} has no failed index to retry" in refused[0]), refused[0]
    status = wait_for_job(store, job_id, settings=cluster_settings, progress=False, timeout=120)
    assert status.state == "succeeded" and (status.done, status.failed) == (30, 0), status
    assert status.committed_batches == status.n_batches == 7, status
    assert int(store.client.hget(store.key(job_id), "retries")) == 1


def test_allow_list_prefix_with_a_trailing_dot_allows_the_top_level_module(
    tmp_path: Path, cluster_env: dict[str, str], store: JobStore,
) -> None:
    """``CURATOR_ALLOWED_MODULES=mypipe.`` (the README's form) allows the module ``mypipe``
    itself, not ``mypipeline``."""
    for name in ("mypipe", "mypipeline"):
        (tmp_path / f"{name}.py").write_text(
            "from curator_worker.components.sources import SyntheticArrays  # noqa: F401\n")
    queue = "curator-security-trailing-dot"
    env = {**cluster_env, "CURATOR_ALLOWED_MODULES": "mypipe."}
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join((str(REPO), str(tmp_path)))}
    try:
        for module, code in (("mypipe", 0), ("mypipeline", 2)):
            spec = stats_spec(tmp_path / "out", 4)
            spec["source"]["module"] = module
            path = tmp_path / f"{module}.yaml"
            path.write_text(yaml.safe_dump(spec))
            done = subprocess.run([str(BIN / "curator-submit"), str(path), "--queue", queue],
                                  env=full, cwd=REPO, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == code, done.stderr
            if code == 0:
                store.cancel(done.stdout.strip())
            else:
                assert "not on the allow-list" in done.stderr
    finally:
        store.client.delete(queue)
