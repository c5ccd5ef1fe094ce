"""kombu's Redis transport, read and written from outside kombu: the one home of that code.

kombu keeps a queue's messages in a list named after the queue (priority steps other than
0 in ``<queue><sep><step>``), a delivered but unacknowledged message in the ``unacked`` hash
(tag -> ``[message, exchange, routing key]``) and its delivery time in the ``unacked_index``
sorted set (tag -> ``time.time()`` at delivery); a sweep (``QoS.restore_visible``) puts back
every message whose score is older than the visibility timeout. The transport options
``unacked_key``, ``unacked_index_key``, ``priority_steps`` and ``sep`` rename those keys and
``global_keyprefix`` prefixes every key kombu writes.

We read those keys with a plain Redis client (lost-batch rescue, :mod:`producer.rescue`),
write the ``unacked_index`` score of a running batch (its lease, :mod:`curator_worker.worker.lease`)
and build message envelopes ourselves (template publishing, :mod:`producer.publish`).
Checked against kombu 5.7.0 and redis-py 8.1.0 (``kombu/transport/redis.py``: ``Channel``
class attributes, ``QoS.append``, ``QoS.restore_visible``, ``Channel._put``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: kombu's defaults (class attributes of ``kombu.transport.redis.Channel``).
DEFAULT_UNACKED = "unacked"
DEFAULT_UNACKED_INDEX = "unacked_index"
DEFAULT_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)

#: Transport names of kombu's Redis transport (``Connection.transport_cls``).
REDIS_TRANSPORTS = ("redis", "rediss")


@dataclass(frozen=True)
class BrokerKeys:
    """Key names of kombu's Redis transport for given transport options.

    Examples
    --------
    >>> keys = BrokerKeys.from_options({"global_keyprefix": "p:"})
    >>> keys.unacked, keys.unacked_index, keys.queue_lists("q")[:2]
    ('p:unacked', 'p:unacked_index', ['p:q', 'p:q\\x06\\x163'])
    """

    prefix: str = ""
    unacked_name: str = DEFAULT_UNACKED
    unacked_index_name: str = DEFAULT_UNACKED_INDEX
    sep: str = DEFAULT_SEP
    priority_steps: Sequence[int] = DEFAULT_PRIORITY_STEPS

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> BrokerKeys:
        """The keys for ``broker_transport_options`` ``options`` (kombu's defaults if none)."""
        options = dict(options or {})
        return cls(
            prefix=str(options.get("global_keyprefix") or ""),
            unacked_name=str(options.get("unacked_key") or DEFAULT_UNACKED),
            unacked_index_name=str(options.get("unacked_index_key") or DEFAULT_UNACKED_INDEX),
            sep=str(options.get("sep") or DEFAULT_SEP),
            priority_steps=tuple(options.get("priority_steps") or DEFAULT_PRIORITY_STEPS),
        )

    @property
    def unacked(self) -> str:
        """The hash of delivered, unacknowledged messages (tag -> [message, ...])."""
        return self.prefix + self.unacked_name

    @property
    def unacked_index(self) -> str:
        """The sorted set of unacknowledged messages' delivery times (tag -> time)."""
        return self.prefix + self.unacked_index_name

    def queue_lists(self, queue: str) -> list[str]:
        """Every list holding ``queue``'s waiting messages: the queue's, then each priority
        step's."""
        return [self.prefix + queue] + [f"{self.prefix}{queue}{self.sep}{step}"
                                        for step in self.priority_steps if step]


def renew_unacked(client: Any, index_key: str, tag: str, now: float) -> None:
    """Move the delivery time of unacknowledged message ``tag`` to ``now``.

    kombu scores ``unacked_index`` with ``time.time()`` at delivery (``QoS.append``) and
    restores the messages scored before ``time.time() - visibility_timeout``
    (``QoS.restore_visible``): a newer score keeps the message from coming back for another
    timeout. ``XX``: only a message still listed (not acknowledged, not already put back).
    """
    client.zadd(index_key, {tag: now}, xx=True)


def message_task_args(envelope: Any) -> tuple[Any, Any]:
    """``(task name, positional args)`` of the JSON envelope of a Celery task message.

    The envelope is what kombu's Redis transport LPUSHes (``Channel._put``): ``headers``
    (Celery's protocol-2 headers, ``task`` among them) and a ``body`` that is base64 of
    the JSON ``[args, kwargs, embed]``.

    Raises
    ------
    KeyError, TypeError, ValueError, IndexError, AttributeError
        For anything that is not such an envelope.
    """
    return envelope["headers"].get("task"), json.loads(base64.b64decode(envelope["body"]))[0]


def unacked_envelope(raw: bytes | str) -> Any:
    """The message envelope in a value of the ``unacked`` hash (``[message, exchange,
    routing key]``, ``QoS.append``).

    Raises
    ------
    ValueError, IndexError, TypeError
        For a value of another shape.
    """
    return json.loads(raw)[0]


def read_published_envelope(raw: bytes | str, task_id: str, routing_key: str
                            ) -> dict[str, Any] | None:
    """The envelope of a message just published to a direct queue, if its layout is the one
    :func:`retarget_envelope` and a template publish reproduce, else ``None``.

    Expected (kombu 5.7.0, protocol 2, json): ``headers.id`` is the task id, the
    ``properties`` have ``delivery_info`` ``{"exchange": "", "routing_key": <queue>}``, no
    priority, ``body_encoding`` ``base64`` and a ``delivery_tag``; ``content-type`` is
    ``application/json``.
    """
    envelope = json.loads(raw)
    headers, props = envelope.get("headers") or {}, envelope.get("properties") or {}
    info = props.get("delivery_info") or {}
    if (headers.get("id") != task_id or info.get("exchange") != ""
            or info.get("routing_key") != routing_key or props.get("priority") not in (0, None)
            or props.get("body_encoding") != "base64" or "delivery_tag" not in props
            or envelope.get("content-type") != "application/json"):
        return None
    return envelope


def envelope_payload(envelope: Mapping[str, Any]) -> Any:
    """The decoded body of an envelope (``[args, kwargs, embed]`` for a Celery task)."""
    return json.loads(base64.b64decode(envelope["body"]))


def encode_body(text: str) -> str:
    """A JSON body as an envelope's ``body`` (``body_encoding`` ``base64``)."""
    return base64.b64encode(text.encode()).decode("ascii")


def retarget_envelope(envelope: dict[str, Any], queue: str) -> str:
    """Point ``envelope`` at ``queue`` (routing key) and return its delivery tag.

    A message for a direct queue is routed by kombu on the anonymous exchange with the
    queue's name as routing key; the worker acknowledges it by the ``delivery_tag`` in its
    properties, which is also its field in ``unacked`` and ``unacked_index``.
    """
    props = envelope["properties"]
    props["delivery_info"]["routing_key"] = queue
    return str(props["delivery_tag"])


class BrokerClientUnavailable(Exception):
    """The producer's broker connection has no redis-py client to borrow."""


@contextmanager
def broker_redis_client(producer: Any) -> Iterator[Any]:
    """A redis-py client of the broker, from kombu's own (synchronous) connection pool.

    That is the client kombu's Redis channel publishes with (``Channel.conn_or_acquire``:
    same URL, password, SSL and Sentinel handling). Not ``channel.client``: that one is on
    the asynchronous pool a consumer's poller reads replies from.

    Raises
    ------
    BrokerClientUnavailable
        For a broker that is not Redis, or a channel without such a client.
    """
    import redis

    transport = producer.connection.transport_cls
    if transport not in REDIS_TRANSPORTS:
        raise BrokerClientUnavailable(f"broker transport {transport!r} is not Redis")
    acquire = getattr(producer.channel, "conn_or_acquire", None)
    if acquire is None:
        raise BrokerClientUnavailable("the broker channel has no redis-py client")
    with acquire() as client:
        if not isinstance(client, redis.Redis):
            raise BrokerClientUnavailable("the broker channel has no redis-py client")
        yield client


class CompressedBodyRefused(ValueError):
    """What a compressed message body gives in a worker: it is never decompressed."""


def _refuse_compressed(body: bytes) -> bytes:
    raise CompressedBodyRefused("compressed messages are not accepted")


def refuse_compressed_bodies() -> None:
    """Make kombu leave every compressed message body compressed in this process.

    kombu decompresses a body while it builds the ``Message`` (``kombu.message.Message``
    calls ``kombu.compression.decompress`` in ``__init__``), before any consumer code sees
    it: a 60 KB zlib body can become gigabytes there. Every decoder in kombu's registry
    (``kombu.compression._decoders``; checked with kombu 5.7.0) is replaced by one that
    raises, so the ``Message`` keeps the raw body and records the error, and the worker
    refuses the message by its ``compression`` header. Our producers never compress.
    """
    from kombu import compression

    for content_type in list(compression._decoders):
        compression._decoders[content_type] = _refuse_compressed


_CLIENT_ATTRIBUTE = "_curator_shared_client"


def reuse_channel_clients() -> None:
    """Make each kombu Redis channel reuse one synchronous redis-py client.

    kombu's Redis channel builds a new ``redis.Redis`` on its connection pool for every
    publish, acknowledgement and delivery bookkeeping (``Channel.conn_or_acquire`` calls
    ``Channel._create_client`` each time; checked with kombu 5.7.0), and redis-py 8 copies
    its table of ~170 response callbacks into every new client: about a tenth of a worker
    node's main process CPU went there (``benchmarks/profile_job.py``). A client holds no
    connection of its own (each command borrows one from the pool), so one client per
    channel and pool serves every caller; a channel whose pool is replaced (a reconnection,
    a fork) gets a new one. The asynchronous client (the consumer's poller) is untouched.
    Idempotent.
    """
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    if getattr(channel._create_client, "_curator_reuses", False):
        return
    create = channel._create_client

    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return create(self, asynchronous=True)
        pool = self.pool
        cached = self.__dict__.get(_CLIENT_ATTRIBUTE)
        if cached is not None and cached[0] is pool:
            return cached[1]
        client = create(self, asynchronous=False)
        self.__dict__[_CLIENT_ATTRIBUTE] = (pool, client)
        return client

    _create_client._curator_reuses = True  # type: ignore[attr-defined]
    channel._create_client = _create_client
