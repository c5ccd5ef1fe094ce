"""The end-to-end job with RabbitMQ as the broker (the test Redis stays the result backend
and job store, through CURATOR_RESULT_BACKEND). Skipped when no RabbitMQ is reachable."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from curator_worker.embedded import RedisServer
from curator_worker.store import JobStore
from tests.deploy.conftest import BIN, base_env, sequential_stats, start, unique
from tests.support.specs import stats_spec, write_spec

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbitmq_reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


@pytest.fixture()
def rabbit_queue() -> Iterator[str]:
    """A queue name no one else uses; the queue and its exchange are deleted afterwards."""
    if not _rabbitmq_reachable():
        pytest.skip(f"no RabbitMQ reachable at 127.0.0.1:5672 ({RABBITMQ_URL})")
    name = unique("curator-deploy-amqp")
    try:
        yield name
    finally:
        with Connection(RABBITMQ_URL, connect_timeout=5) as conn:
            channel = conn.channel()
            try:
                channel.queue_delete(name)
                channel.exchange_delete(name)  # Celery declares one named after the queue
            finally:
                channel.close()


def test_job_on_rabbitmq_broker_with_redis_job_store(
        rabbit_queue: str, redis_server: RedisServer, tmp_path: Path) -> None:
    env = base_env({
        "CURATOR_BROKER_URL": RABBITMQ_URL,
        "CURATOR_RESULT_BACKEND": redis_server.url,
        "CURATOR_QUEUE": rabbit_queue,
    })
    node = f"{unique('amqp')}@{socket.gethostname()}"
    # no mingle/gossip: do not talk to other people's workers on this broker
    argv = [str(BIN / "curator-worker"), "--concurrency", "2", "--hostname", node,
            "--without-mingle", "--without-gossip"]
    worker = start("amqp-worker", argv, env, tmp_path, cwd=tmp_path)
    try:
        spec = stats_spec(tmp_path / "out", 60)
        spec_path = write_spec(tmp_path / "job.yaml", spec)
        done = subprocess.run(
            [str(BIN / "curator-submit"), str(spec_path), "--batch-size", "7", "--wait",
             "--json", "--timeout", "120"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr + worker.tail()
        summary = json.loads(done.stdout)
        assert summary["state"] == "succeeded"
        assert (summary["done"], summary["failed"], summary["total"]) == (60, 0, 60)
        assert (tmp_path / "out" / "stats.json").read_bytes() == sequential_stats(
            tmp_path / "seq", spec)
        assert len(list((tmp_path / "out" / "arrays").glob("*.npz"))) == 60
        store = JobStore.from_url(redis_server.url)
        assert {c["node"] for c in store.commit_records(summary["job_id"]).values()} == {node}
        assert "guest:guest" not in done.stdout + done.stderr, "credentials are not printed"
    finally:
        worker.stop()
