"""The embedded cluster (no broker configured) stops warm after a job, at once otherwise."""

from __future__ import annotations

import time

import psutil
import pytest

from curator_worker import run_pipeline
from curator_worker.components import NpzPerIndex, SyntheticArrays
from curator_worker.embedded import WARM_STOP_SECONDS
from curator_worker.errors import JobWaitTimeout


@pytest.mark.usefixtures("clean_env")
def test_an_interrupted_run_stops_its_embedded_cluster_at_once(tmp_path) -> None:
    """A run that ends in an error (here its wait times out) while a batch is running does
    not wait for that batch: the node is stopped at once, not shut down warm (which the
    README quickstart test covers: a job that ended leaves no shards)."""
    pipeline = SyntheticArrays(count=2, size=4, sleep_ms=120_000).write(
        NpzPerIndex(output_dir=str(tmp_path / "out")))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    with pytest.raises(JobWaitTimeout, match="on the embedded cluster, which is stopped"):
        run_pipeline(pipeline, backend="celery", n_jobs=1, timeout=3)
    # start-up (1-2 s) + 3 s of waiting + a cold stop; a warm one would add 10 s
    assert time.monotonic() - started < 3 + WARM_STOP_SECONDS
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_redis_that_cannot_start_stops_the_worker_started_beside_it() -> None:
    """Redis and the worker node start together; when Redis fails (here its port is taken),
    ``start()`` raises one line and leaves no worker process behind (also when called
    outside a ``with`` block, whose exit would stop everything anyway)."""
    import socket

    from curator_worker.embedded import LocalCluster
    from curator_worker.errors import CuratorError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: Redis cannot bind, PING is refused
        cluster = LocalCluster(workers=1)
        cluster.redis.port = taken.getsockname()[1]
        try:
            with pytest.raises(CuratorError, match="embedded Redis server did not start"):
                cluster.start()
            assert cluster.worker is not None, "the worker was started with Redis"
            assert cluster.worker.poll() is not None, "the worker was stopped"
            assert cluster.redis.proc is not None and cluster.redis.proc.poll() is not None
        finally:
            cluster.stop(warm=False)
