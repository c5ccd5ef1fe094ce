"""Contract tests against a real Redis: kombu's Redis transport as curator_worker.compat uses it.

A Celery producer publishes one task message the way a template publish captures its
template; a kombu channel takes it as a worker does (unacknowledged); we then read the
queue list, the ``unacked`` hash and the ``unacked_index`` sorted set with a plain client
and check what :mod:`curator_worker.compat.kombu` assumes about each of them, including
what an ``unacked_index`` score means to kombu's restore sweep (the batch lease).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection, Queue

from curator_worker.compat import celery as compat
from curator_worker.compat import kombu as kombu_compat
from curator_worker.config import Settings
from curator_worker.embedded import RedisServer
from curator_worker.messaging import RUN_BATCH, create_app
from producer.publish import frozen_body
from tests.support.cluster import private_redis

QUEUE = "compat-contract"
VISIBILITY = 30


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with private_redis("curator-test-compat-") as running:
        yield running


@pytest.fixture()
def app(server: RedisServer) -> Iterator[Celery]:
    producer = create_app(Settings(broker_url=server.url, queue=QUEUE))
    yield producer
    producer.close()


def publish_one(app: Celery, args: tuple[str, str, list[int]]) -> tuple[str, bytes]:
    """One ``run_batch`` message sent as a template publish sends it; (task id, raw)."""
    task_id, group_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = frozen_body(app, args[0], QUEUE, group_id, str(uuid.uuid4()))
    target = compat.direct_queue(app, QUEUE)
    assert target is not None
    with app.producer_or_acquire() as producer, \
            kombu_compat.broker_redis_client(producer) as client:
        assert isinstance(client, redis.Redis), "kombu's channel has no redis-py client"
        compat.send_one_task_message(
            app, producer, task_id, RUN_BATCH, args, Queue(QUEUE, target.exchange, QUEUE),
            group_id=group_id, group_index=0, chord=body, ignore_result=True)
        raw = client.lindex(QUEUE, 0)
    assert raw is not None, f"the message is not in the list named after its queue {QUEUE!r}"
    return task_id, raw


def test_a_published_message_has_the_envelope_we_copy(app: Celery, server: RedisServer
                                                       ) -> None:
    args = ("job-c1", "b000000", [3, 4, 5])
    task_id, raw = publish_one(app, args)
    envelope = kombu_compat.read_published_envelope(raw, task_id, QUEUE)
    assert envelope is not None, f"kombu's envelope layout changed: {raw[:600]!r}"
    assert kombu_compat.message_task_args(envelope) == (RUN_BATCH, list(args))
    payload = kombu_compat.envelope_payload(envelope)
    assert len(payload) == 3 and payload[2]["chord"]["task"] == "curator.gather"
    tag = kombu_compat.retarget_envelope(envelope, "elsewhere")
    assert tag and envelope["properties"]["delivery_info"]["routing_key"] == "elsewhere"
    redis.Redis.from_url(server.url).delete(QUEUE)


def test_unacked_keys_and_what_an_index_score_means(app: Celery, server: RedisServer) -> None:
    """kombu lists a delivered message in ``unacked`` (``[message, exchange, routing
    key]``) and scores it in ``unacked_index`` with its delivery time; its sweep restores
    a message scored longer ago than the visibility timeout, and a renewed score keeps it
    from coming back."""
    plain = redis.Redis.from_url(server.url)
    keys = kombu_compat.BrokerKeys()
    task_id, _ = publish_one(app, ("job-c2", "b000001", [7]))
    with Connection(server.url, transport_options={"visibility_timeout": VISIBILITY}) as conn:
        channel = conn.default_channel
        message = channel.basic_get(QUEUE)
        assert message is not None and message.headers["id"] == task_id
        tag = message.delivery_tag
        envelope = kombu_compat.unacked_envelope(plain.hget(keys.unacked, tag))
        assert kombu_compat.message_task_args(envelope)[0] == RUN_BATCH, (
            f"kombu's {keys.unacked!r} hash values changed shape")
        score = plain.zscore(keys.unacked_index, tag)
        assert score is not None and abs(score - time.time()) < 5, (
            f"kombu's {keys.unacked_index!r} score is no longer the delivery time: {score}")

        kombu_compat.renew_unacked(plain, keys.unacked_index, tag,
                                   time.time() - VISIBILITY + 10)  # renewed 20 s ago
        channel.qos.restore_visible(num=100, interval=1)
        assert plain.llen(QUEUE) == 0, "a message renewed within the timeout came back"
        assert plain.zscore(keys.unacked_index, tag) is not None

        kombu_compat.renew_unacked(plain, keys.unacked_index, tag,
                                   time.time() - VISIBILITY - 10)  # as if never renewed
        channel.qos.restore_visible(num=100, interval=1)
        assert plain.llen(QUEUE) == 1, "a message older than the timeout was not restored"
        assert plain.zscore(keys.unacked_index, tag) is None
        assert plain.hget(keys.unacked, tag) is None

        kombu_compat.renew_unacked(plain, keys.unacked_index, tag, time.time())
        assert plain.zscore(keys.unacked_index, tag) is None, "XX: no entry is created"
    plain.delete(QUEUE)
