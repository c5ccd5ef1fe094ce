"""``curator-worker --autoscale MAX,MIN``: the pool starts small, grows under load, and the
job's result is the same as a sequential run."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from celery import Celery

from curator_worker.config import Settings
from curator_worker.embedded import RedisServer
from curator_worker.messaging import create_app
from curator_worker.store import SUCCEEDED, JobStore
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.deploy.conftest import (
    BIN,
    base_env,
    sequential_stats,
    start,
    unique,
    wait_for_nodes,
)
from tests.support.specs import stats_spec

MAX, MIN = 3, 1


def _stats(app: Celery, node: str) -> dict[str, Any]:
    replies = app.control.inspect([node], timeout=5.0).stats() or {}
    assert node in replies, f"{node} did not answer inspect stats"
    return replies[node]


def test_autoscaling_worker_grows_under_load_and_completes_the_job(
        redis_server: RedisServer, tmp_path: Path) -> None:
    queue = unique("autoscale")
    node = f"{unique('autoscale')}@{socket.gethostname()}"
    settings = Settings(broker_url=redis_server.url, queue=queue)
    argv = [str(BIN / "curator-worker"), "--autoscale", f"{MAX},{MIN}", "--hostname", node,
            "--without-mingle", "--without-gossip"]
    proc = start("autoscale-worker", argv, base_env(settings.environ()), tmp_path, cwd=tmp_path)
    app = create_app(settings)
    try:
        wait_for_nodes(app, [node], [proc])
        idle = _stats(app, node)
        assert idle["autoscaler"]["max"] == MAX and idle["autoscaler"]["min"] == MIN
        assert idle["prefetch_count"] == MAX, "it reserves tasks for MAX processes"
        assert len(idle["pool"]["processes"]) == MIN, "an idle node keeps MIN processes"

        spec = stats_spec(tmp_path / "out", 24, size=16)
        spec["source"]["params"]["sleep_ms"] = 250  # 12 batches of 0.5 s
        job = submit_job(spec, settings, batch_size=2)
        store = JobStore.from_url(settings.effective_job_store_url)
        most = MIN
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and most < MAX:
            if store.status(job.job_id).is_final:
                break
            most = max(most, len(_stats(app, node)["pool"]["processes"]))
            time.sleep(0.2)
        assert most == MAX, f"the pool grew to {most} processes, not {MAX}\n{proc.tail()}"

        status = wait_for_job(store, job.job_id, settings=settings, progress=False, timeout=120)
        assert status.state == SUCCEEDED, store.failures(job.job_id)
        assert (status.done, status.total) == (24, 24)
        pids = {c["pid"] for c in store.commit_records(job.job_id).values()}
        assert 2 <= len(pids) <= MAX, f"batches ran in {len(pids)} processes"
        assert (tmp_path / "out" / "stats.json").read_bytes() == sequential_stats(
            tmp_path / "seq", spec)
    finally:
        app.close()
        proc.stop()
