"""A batch that outlasts the broker's visibility timeout, still making progress, runs once."""

from __future__ import annotations

from pathlib import Path

from curator_worker.components import NpzPerIndex, SyntheticArrays
from curator_worker.config import Settings
from curator_worker.contract.spec import pipeline_to_spec
from curator_worker.messaging import create_app
from curator_worker.store import SUCCEEDED, JobStore
from curator_worker.store.keys import delivery_tags_key
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.support.cluster import WorkerNode, private_redis, wait_until_ready


def test_a_batch_longer_than_the_visibility_timeout_is_not_delivered_again(
        tmp_path: Path) -> None:
    """9 s of batch against a 4 s visibility timeout: kombu's sweep (every second here)
    would put the message back while it runs and the node's idle process would start it
    again; the worker renews the lease after each index instead."""
    with private_redis("curator-test-lease-") as server:
        settings = Settings(broker_url=server.url, queue="lease-test", visibility_timeout=4)
        name = "lease@test-host"
        node = WorkerNode(settings.environ(), name, 2, settings.queue, tmp_path)
        app = create_app(settings)
        try:
            wait_until_ready(app, [name], [node])
            pipeline = SyntheticArrays(count=6, size=4, sleep_ms=1500).write(
                NpzPerIndex(output_dir=str(tmp_path / "out")))
            job = submit_job(pipeline_to_spec(pipeline), settings, batch_size=6)
            store = JobStore.from_url(settings.effective_job_store_url)
            assert store.client.hget(delivery_tags_key(job.job_id), "b000000"), "tag recorded"
            status = wait_for_job(store, job.job_id, settings=settings, progress=False,
                                  timeout=90)
            assert status.state == SUCCEEDED and status.done == 6
            deliveries = store.client.hget(store.key(job.job_id, "attempts"), "b000000")
            assert int(deliveries) == 1, f"the batch was delivered {int(deliveries)} times"
        finally:
            app.close()
            node.stop()
