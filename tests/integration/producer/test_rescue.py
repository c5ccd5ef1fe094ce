"""Batches a Redis broker lost (popped, never delivered) are found and sent again.

kombu's Redis transport loses a message whose BRPOP reply was in flight when its worker
node was SIGKILLed (celery/kombu#305). Here a message is popped from the queue by hand,
exactly what such a dead node leaves behind, and the waiter's rescue must bring it back.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis

import producer.rescue as rescue_module
from curator_worker.config import Settings
from curator_worker.store import SUCCEEDED, JobStore
from producer.rescue import LostBatchRescue, missing_batches
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.support.cluster import WorkerNode
from tests.support.specs import stats_spec

pytestmark = pytest.mark.integration


@pytest.fixture()
def fast_rescue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rescue_module, "STALL_SECONDS", 0.0)
    monkeypatch.setattr(rescue_module, "CONFIRM_SECONDS", 0.0)


def _queued_keys(client: redis.Redis, queue: str) -> list[str]:
    """Batch keys of the messages queued on ``queue``."""
    return [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][1]
            for raw in client.lrange(queue, 0, -1)]


def _lost_job(tmp_path: Path, settings: Settings) -> tuple[str, str, redis.Redis]:
    """A job of 8 batches on a queue nobody consumes, with its oldest message popped."""
    job = submit_job(stats_spec(tmp_path, 40), settings, batch_size=5)
    client = redis.Redis.from_url(settings.broker_url or "")
    raw = client.rpop(settings.queue)  # what BRPOP hands a worker first
    assert raw is not None and client.llen(settings.queue) == 7
    lost = rescue_module._batch_of(json.loads(raw), job.job_id)
    assert lost == "b000000"
    return job.job_id, lost, client


def test_a_popped_batch_is_found_confirmed_and_sent_again(
    tmp_path: Path, cluster_settings: Settings, store: JobStore, fast_rescue: None
) -> None:
    settings = replace(cluster_settings, queue=f"rescue-{uuid.uuid4().hex[:8]}")
    job_id, lost, client = _lost_job(tmp_path, settings)
    try:
        assert missing_batches(client, job_id, settings.queue,
                               set(store.uncommitted(job_id))) == {lost}
        rescue = LostBatchRescue(store, settings, job_id)
        status = store.status(job_id)
        assert rescue.check(status) == []  # first sight of this progress: start the clock
        assert rescue.check(status) == []  # missing once: a suspect, not yet lost
        assert rescue.check(status) == [lost]  # missing twice: sent again
        assert rescue.resent == [lost]
        assert sorted(_queued_keys(client, settings.queue)) == [f"b{n:06d}" for n in range(8)]
        assert rescue.check(status) == []  # now queued: nothing more to do
        rescue.close()
    finally:
        client.delete(settings.queue)
        client.close()


def test_unacknowledged_and_queued_batches_are_not_lost(
    tmp_path: Path, cluster_settings: Settings, store: JobStore
) -> None:
    settings = replace(cluster_settings, queue=f"rescue-{uuid.uuid4().hex[:8]}")
    job_id, lost, client = _lost_job(tmp_path, settings)
    envelope = json.loads(client.lindex(settings.queue, -1))
    tag = f"test-{uuid.uuid4().hex}"
    try:
        # a worker holds a delivered message in kombu's unacked hash: [message, exchange, key]
        client.hset("unacked", tag, json.dumps([envelope, "", settings.queue]))
        client.rpop(settings.queue)
        # and a message waits in the queue's list of priority step 3
        client.rpoplpush(settings.queue, settings.queue + "\x06\x163")
        assert missing_batches(client, job_id, settings.queue,
                               set(store.uncommitted(job_id))) == {lost}
    finally:
        client.hdel("unacked", tag)
        client.delete(settings.queue, settings.queue + "\x06\x163")
        client.close()


def test_waiting_finishes_a_job_whose_batch_the_broker_lost(
    tmp_path: Path, cluster_settings: Settings, store: JobStore, fast_rescue: None
) -> None:
    settings = replace(cluster_settings, queue=f"rescue-{uuid.uuid4().hex[:8]}")
    job_id, _, client = _lost_job(tmp_path, settings)
    node = WorkerNode(settings.environ(), f"rescue-{uuid.uuid4().hex[:6]}@test", 2,
                      settings.queue, tmp_path)
    try:
        status = wait_for_job(store, job_id, settings=settings, progress=False, timeout=120)
        assert status.state == SUCCEEDED, node.tail()
        assert (status.done, status.failed) == (40, 0)
        assert all(paths for paths in store.paths(job_id, list(range(40))))
    finally:
        node.stop()
        client.close()
