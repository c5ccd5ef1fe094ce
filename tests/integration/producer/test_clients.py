"""Producer clients are reused per cluster, fail fast when the server goes, reconnect after."""

from __future__ import annotations

import time

import pytest

from curator_worker.config import Settings
from curator_worker.embedded import RedisServer
from curator_worker.errors import BrokerUnavailableError
from producer import clients
from producer.clients import clients_for, forget
from tests.support.cluster import private_redis


@pytest.fixture()
def own_redis():
    """A server this test may stop and start again."""
    with private_redis("curator-test-clients-") as server:
        yield server


def test_the_same_cluster_gets_the_same_clients(own_redis: RedisServer) -> None:
    settings = Settings(broker_url=own_redis.url, queue="clients-test")
    app, store = clients_for(settings)
    try:
        assert clients_for(settings) == (app, store)
        other = Settings(broker_url=own_redis.url, queue="clients-other")
        assert clients_for(other)[0] is not app, "other settings, other clients"
        forget(other)
        assert store.client.ping()
    finally:
        forget(settings)
    assert clients_for(settings)[0] is not app, "forgotten clients are not reused"
    forget(settings)


def test_a_stopped_server_fails_fast_and_a_restarted_one_is_reconnected(
    own_redis: RedisServer,
) -> None:
    settings = Settings(broker_url=own_redis.url, queue="clients-test")
    clients_for(settings)
    own_redis.stop()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="Cannot reach Redis"):
        clients_for(settings, timeout=2.0)
    assert time.monotonic() - started < 10
    assert settings not in clients._cache
    own_redis.start()  # same port and password
    try:
        _, store = clients_for(settings)
        assert store.client.ping()
    finally:
        forget(settings)


def test_at_most_max_clusters_are_kept(own_redis: RedisServer, monkeypatch) -> None:
    monkeypatch.setattr(clients, "MAX_CLUSTERS", 2)
    kept = [Settings(broker_url=own_redis.url, queue=f"clients-{n}") for n in range(3)]
    try:
        for settings in kept:
            clients_for(settings)
        assert kept[0] not in clients._cache and kept[2] in clients._cache
    finally:
        for settings in kept:
            forget(settings)
