"""The ``template`` publishing method: one header message built by Celery and published by
kombu is captured and becomes the template of every other header of the chord (see
:mod:`producer.publish` for when it is used and what it guarantees).

Everything here that relies on Celery's or kombu's internals is called from
:mod:`curator_worker.compat`.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.canvas import Signature
from kombu import Queue

from curator_worker.compat.celery import (
    argsrepr_limits,
    direct_queue,
    header_argsrepr,
    publish_hooks_connected,
    send_one_task_message,
    send_task_sent_events,
)
from curator_worker.compat.kombu import (
    BrokerClientUnavailable,
    broker_redis_client,
    encode_body,
    envelope_payload,
    read_published_envelope,
    retarget_envelope,
)
from curator_worker.contract.planning import Batch
from curator_worker.messaging import RUN_BATCH
from curator_worker.store.keys import delivery_tags_key

log = logging.getLogger(__name__)

_SENTINEL = "@@curator-{}@@"


class TemplateUnavailable(Exception):
    """The template method cannot be used with this app or broker (use ``batch``)."""


def fast_uuids(n: int) -> list[str]:
    """``n`` random version-4 UUID strings (like ``str(uuid.uuid4())``, several times faster)."""
    raw = os.urandom(16 * n).hex()
    out = []
    for k in range(0, 32 * n, 32):
        h = raw[k : k + 32]
        out.append(
            f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
        )
    return out


def ignore_result_header(app: Celery) -> bool | None:
    """What Celery's own publish puts in the ``ignore_result`` header.

    ``None`` when ``curator.run_batch`` is not registered in this process; the task's
    setting when it is (tasks are shared across apps once ``curator_worker.worker.tasks`` is
    imported, as in a worker or a test process).
    """
    task = app.tasks.get(RUN_BATCH)
    return task.ignore_result if task is not None else None


class TemplatePublisher:
    """Header envelopes from a template captured from one real publish (see module doc)."""

    def __init__(
        self,
        client: Any,
        key: str,
        parts: list[str],
        slots: list[str],
        body_suffix: str,
        job_id: str,
        argsrepr_max: int,
        repr_levels: int,
    ) -> None:
        self.client = client
        self.key = key
        self.parts = parts
        self.slots = slots
        self.body_suffix = body_suffix
        self.job_id = job_id
        self.argsrepr_max = argsrepr_max
        self.repr_levels = repr_levels
        #: ``(task id, argsrepr)`` of each header published, when kept for task-sent events.
        self.sent: list[tuple[str, str]] | None = None
        #: Seconds the delivery tags are kept (the job's time to live).
        self.ttl = 0

    @classmethod
    def capture(
        cls,
        app: Celery,
        producer: Any,
        client: Any,
        job_id: str,
        first: Batch,
        queue: str,
        group_id: str,
        body: Signature,
    ) -> TemplatePublisher:
        """Publish one header message to a scratch list, read it back, make the template.

        Raises
        ------
        TemplateUnavailable
            When anything about the broker or the message is not what the template
            method reproduces (then nothing was published to ``queue``).
        """
        conf = app.conf
        if conf.task_protocol != 2 or conf.task_serializer != "json":
            raise TemplateUnavailable("needs task protocol 2 and the json serializer")
        if conf.task_compression:
            raise TemplateUnavailable("message compression is on")
        if conf.task_routes or conf.task_default_priority is not None or conf.task_always_eager:
            raise TemplateUnavailable("task routes, a default priority or eager mode are set")
        if publish_hooks_connected():
            raise TemplateUnavailable("before/after_task_publish signal receivers are connected")
        target = direct_queue(app, queue)
        if target is None:
            raise TemplateUnavailable(f"queue {queue!r} is not a plain direct queue")
        scratch = f"curator.publish-template.{uuid.uuid4().hex}"
        task_id = str(uuid.uuid4())
        # one index is enough to learn the layout; Celery's saferepr of a long index list
        # (the argsrepr header) would cost more than publishing the whole chord
        first = Batch(first.key, list(first.indices[:1]))
        scratch_queue = Queue(scratch, exchange=target.exchange, routing_key=scratch,
                              no_declare=True)
        try:
            send_one_task_message(
                app, producer, task_id, RUN_BATCH, (job_id, first.key, first.indices),
                scratch_queue, group_id=group_id, group_index=0, chord=body,
                ignore_result=ignore_result_header(app),
            )
            raw = client.rpop(scratch)
        finally:
            client.delete(scratch)
        if raw is None:
            raise TemplateUnavailable("the published message is not in the list named after "
                                      "its queue (key prefix or priority in use?)")
        envelope = read_published_envelope(raw, task_id, scratch)
        if envelope is None:
            raise TemplateUnavailable("the published envelope has an unexpected layout")
        headers = envelope["headers"]
        decoded = envelope_payload(envelope)
        if decoded[0] != [job_id, first.key, list(first.indices)] or len(decoded) != 3:
            raise TemplateUnavailable("the published body has an unexpected layout")
        body_suffix = ", " + json.dumps(decoded[1]) + ", " + json.dumps(decoded[2]) + "]"

        # The real queue, as kombu routes it: anonymous exchange, routing key = queue name.
        old_tag = retarget_envelope(envelope, queue)
        producer.maybe_declare(target)
        envelope["body"] = _SENTINEL.format("body")
        headers["argsrepr"] = _SENTINEL.format("argsrepr")
        headers["group_index"] = _SENTINEL.format("group_index")
        text = json.dumps(envelope)
        for value, name in ((task_id, "id"), (old_tag, "tag")):
            text = text.replace(json.dumps(value), json.dumps(_SENTINEL.format(name)))
        parts, slots = split_template(text)
        publisher = cls(client, queue, parts, slots, body_suffix, job_id,
                        *argsrepr_limits(app))
        expires = conf.result_expires
        publisher.ttl = int(expires.total_seconds() if hasattr(expires, "total_seconds")
                            else expires or 0)
        return publisher

    def argsrepr(self, args: tuple[str, str, list[int]]) -> str:
        """The ``argsrepr`` header Celery writes for ``args`` (see :func:`header_argsrepr`)."""
        return header_argsrepr(args, self.argsrepr_max, self.repr_levels)

    def envelopes(
        self, batches: Sequence[Batch], first_index: int, tags: Sequence[str]
    ) -> Iterator[str]:
        """The JSON envelope of each of ``batches`` (group indices from ``first_index``),
        with the delivery tags ``tags``."""
        ids = fast_uuids(len(batches))
        parts, slots, suffix, job_id = self.parts, self.slots, self.body_suffix, self.job_id
        dumps, b64, sent = json.dumps, encode_body, self.sent
        for n, batch in enumerate(batches):
            args = (job_id, batch.key, batch.indices)
            body = "[" + dumps(args) + suffix
            argsrepr = self.argsrepr(args)
            if sent is not None:
                sent.append((ids[n], argsrepr))
            values = {
                "body": '"' + b64(body) + '"',
                "argsrepr": dumps(argsrepr),
                "group_index": str(first_index + n),
                "id": '"' + ids[n] + '"',
                "tag": '"' + tags[n] + '"',
            }
            out = [parts[0]]
            for slot, part in zip(slots, parts[1:]):
                out.append(values[slot])
                out.append(part)
            yield "".join(out)

    def publish(self, batches: Sequence[Batch], chunk_size: int, keep: bool = False) -> None:
        """LPUSH every header envelope, ``chunk_size`` per command, in header order.

        ``keep`` records each header's task id and ``argsrepr`` in :attr:`sent`.
        """
        self.sent = [] if keep else None
        tags_key = delivery_tags_key(self.job_id)
        with self.client.pipeline(transaction=False) as pipe:
            for start in range(0, len(batches), chunk_size):
                chunk = batches[start : start + chunk_size]
                tags = fast_uuids(len(chunk))
                pipe.lpush(self.key, *self.envelopes(chunk, start, tags))
                # each batch's delivery tag, for its worker to renew its lease (worker/lease.py)
                pipe.hset(tags_key, mapping={b.key: t for b, t in zip(chunk, tags, strict=True)})
                if self.ttl:
                    pipe.expire(tags_key, self.ttl)
                pipe.execute()


def split_template(text: str) -> tuple[list[str], list[str]]:
    """Split ``text`` at the quoted sentinels: static parts and the slot names between."""
    parts: list[str] = []
    slots: list[str] = []
    rest = text
    marker = '"' + _SENTINEL.format("")[:-2]
    while True:
        at = rest.find(marker)
        if at < 0:
            parts.append(rest)
            return parts, slots
        end = rest.index('@@"', at + len(marker))
        parts.append(rest[:at])
        slots.append(rest[at + len(marker) : end])
        rest = rest[end + 3 :]


@contextmanager
def broker_client(producer: Any) -> Iterator[Any]:
    """The redis-py client kombu's channel publishes with
    (:func:`~curator_worker.compat.kombu.broker_redis_client`)."""
    try:
        with broker_redis_client(producer) as client:
            yield client
    except BrokerClientUnavailable as exc:
        raise TemplateUnavailable(str(exc)) from None


def send_sent_events(
    app: Celery,
    producer: Any,
    queue: str,
    publisher: TemplatePublisher,
    chunk_size: int,
) -> None:
    """``task-sent`` events for template-published headers (``send_task`` sends its own)."""
    if publisher.sent is None:
        return
    send_task_sent_events(app, producer, RUN_BATCH, queue, publisher.sent, chunk_size)
