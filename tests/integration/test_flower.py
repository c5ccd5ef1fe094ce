"""Flower on the test cluster: both worker nodes and a job's tasks visible via its REST API."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from curator_worker.embedded import free_port, stop_process
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.conftest import NODE_NAMES
from tests.integration.test_celery_jobs import BIN
from tests.support.cluster import REPO
from tests.support.specs import stats_spec

pytestmark = pytest.mark.usefixtures("worker_nodes")
AUTH = "admin:s3cret-pw"


def get(url: str, auth: str | None = AUTH) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode()
            return response.status, json.loads(body) if body.startswith(("{", "[")) else body
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture()
def flower(cluster_env: dict[str, str], tmp_path: Path):
    port = free_port()
    env = {**os.environ, **cluster_env, "CURATOR_FLOWER_BASIC_AUTH": AUTH,
           "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "flower.log", "wb")
    proc = subprocess.Popen([str(BIN / "curator-worker"), "flower", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "flower.log").read_text()
            try:
                if get(f"{base}/healthcheck")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        else:
            pytest.fail("Flower did not answer /healthcheck within 60 s")
        time.sleep(1.0)  # let Flower's event consumer subscribe before tasks are sent
        yield base, tmp_path / "flower.log"
    finally:
        stop_process(proc, grace=10)
        log.close()


def test_flower_shows_workers_and_job_tasks(flower, store, cluster_settings, tmp_path):
    base, log_path = flower
    job = submit_job(stats_spec(tmp_path, 40), cluster_settings, batch_size=10)
    status = wait_for_job(store, job.job_id, settings=cluster_settings, progress=False,
                          timeout=120)
    assert status.state == "succeeded"

    deadline = time.monotonic() + 30
    workers: dict = {}
    tasks: dict = {}
    while time.monotonic() < deadline:
        _, workers = get(f"{base}/api/workers?refresh=true")
        _, tasks = get(f"{base}/api/tasks?limit=1000")
        ours = {tid: t for tid, t in (tasks or {}).items() if job.job_id in str(t.get("args"))}
        if set(NODE_NAMES) <= set(workers or {}) and len(ours) >= 5:
            break
        time.sleep(0.5)
    assert set(NODE_NAMES) <= set(workers), workers.keys()
    ours = {tid: t for tid, t in tasks.items() if job.job_id in str(t.get("args"))}
    names = {t["name"] for t in ours.values()}
    assert names == {"curator.run_batch", "curator.gather"}, names
    batches = [t for t in ours.values() if t["name"] == "curator.run_batch"]
    assert len(batches) == 4 and {t["state"] for t in batches} == {"SUCCESS"}
    assert all("b00000" in str(t["args"]) for t in batches), "args show the batch key"
    assert {t["worker"] for t in batches} <= set(NODE_NAMES)

    code, _ = get(f"{base}/api/workers", auth=None)
    assert code == 401, "the API needs credentials when basic auth is on"
    code, _ = get(f"{base}/api/workers", auth="admin:wrong")
    assert code == 401
    password = cluster_settings.broker_url.split(":")[2].split("@")[0]
    assert password not in log_path.read_text(errors="replace")


def test_flower_refuses_public_address_without_auth(cluster_env):
    env = {**os.environ, **cluster_env}
    env.pop("CURATOR_FLOWER_BASIC_AUTH", None)
    done = subprocess.run([str(BIN / "curator-worker"), "flower", "--address", "0.0.0.0"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "CURATOR_FLOWER_BASIC_AUTH" in done.stderr and "Traceback" not in done.stderr
