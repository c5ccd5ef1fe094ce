"""Connections to the job store's Redis: checked at once, then riding out restarts."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from curator_worker.config import redact_url
from curator_worker.errors import BrokerUnavailableError


def ping_once(url: str, timeout: float) -> None:
    """One PING to the Redis at ``url`` on a connection of its own: no retries, ``timeout``
    seconds for connect and reply. Raises what the client raises (``redis.RedisError``,
    ``OSError``, ``ValueError`` for a bad URL)."""
    probe = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                 retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
    finally:
        probe.close()


#: How long a job store client keeps retrying through an outage (a Redis restart).
RETRY_ATTEMPTS = 40


def connect(url: str, *, timeout: float = 5.0, retries: int = RETRY_ATTEMPTS) -> redis.Redis:
    """A Redis client for ``url``: checked within ``timeout`` seconds, then resilient.

    A first PING on a probe connection (no retries, ``timeout`` for connect and reply)
    answers within ``timeout`` whether the server is there. The returned client retries
    connection errors ``retries`` times with exponential backoff (about a minute in all
    by default), so a Redis restart mid-job is ridden out; every job store write is
    idempotent, so retries are safe. ``retries=0``: a client that fails within
    ``timeout`` instead (for code that must never block, like a worker's event loop).

    Raises
    ------
    BrokerUnavailableError
        Naming the URL with its password redacted.
    """
    try:
        ping_once(url, timeout)
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout,
            socket_timeout=max(timeout, 30.0) if retries else timeout,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries) if retries
            else Retry(NoBackoff(), 0),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BrokerUnavailableError(
            f"Cannot reach Redis at {redact_url(url)}: {type(exc).__name__}: "
            f"{(redact_url(str(exc)) if '://' in str(exc) else str(exc)).rstrip('.')}. "
            "Check the URL and "
            "that the server is running."
        ) from None
    return client
