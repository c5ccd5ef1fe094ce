"""Bulk publishing of a job's chord: standard Celery task messages, pipelined.

Publishing ``chord([run_batch, ...], gather)`` through Celery's canvas costs one
signature, one message build and several Redis round trips per header task (about
1,500 tasks/s). This module sends exactly the same messages much faster.

``template`` (Redis broker and Redis result backend)
    One header message is built by Celery (``app.amqp.create_task_message``) and
    really published by kombu into a private scratch list; it is read back and becomes
    the *template*: every other header message is that envelope with its own task id,
    delivery tag, group index, ``argsrepr`` and body (``[args, kwargs, embed]`` where the
    embed carries the chord body, identical for every header). The envelopes are LPUSHed,
    a chunk per command, through a non-transactional pipeline to the list named after the
    queue, which is where kombu's Redis transport puts them; a stock ``celery worker``
    consumes them like any other task. Reading the template back from the list also
    checks that the queue's key is what kombu uses (a ``global_keyprefix``, a priority or
    a non-direct exchange makes the check fail, and the ``batch`` method is used). Each
    batch's delivery tag goes to ``curator:job:<id>:tags`` in the same pipeline, for its
    worker to renew the message's lease while it runs (:mod:`curator_worker.worker.lease`).
``batch`` (any broker, Redis result backend)
    Each header goes through ``app.send_task`` on one producer inside kombu's
    ``Producer.batch()`` (buffered in one pipeline on Redis; immediate elsewhere).
``canvas`` (any other result backend)
    Celery's own ``chord(header, body).apply_async()``.

Chord semantics are Celery's: for the Redis result backend the chord size is written
with :meth:`RedisBackend.set_chord_size` (the call ``group._apply_tasks`` makes) *before*
the first header message is published, so whichever header completes the count fires
``gather``, exactly once (Celery 5.7's chord Lua script de-duplicates headers and claims
the callback). Header task names and arguments are the canvas' own
(``curator.run_batch(job_id, batch_key, indices)``), so Flower and logs show them.

With the template method, ``task-sent`` events (``task_send_sent_event``) are sent
through Celery's event dispatcher for chords of at most ``sent_events_limit`` headers; a
bigger chord would flood Flower's in-memory state (and cut the publishing rate about
four times), and Flower sees every task anyway when a worker receives it. (The ``batch``
and ``canvas`` methods send them as ``send_task`` does.)

Everything here that relies on Celery's or kombu's internals (the message Celery builds,
the envelope kombu writes, the chord size, ``saferepr``) is called from
:mod:`curator_worker.compat` (see docs/celery-internals.md).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from celery import Celery, chord
from celery.canvas import Signature

from curator_worker.compat.celery import (
    has_chord_size,
    set_chord_size,
)
from curator_worker.contract.planning import Batch
from curator_worker.messaging import GATHER, RUN_BATCH
from producer.template_publisher import (
    TemplatePublisher,
    TemplateUnavailable,
    broker_client,
    send_sent_events,
)

log = logging.getLogger(__name__)

#: Header messages per LPUSH command (and per pipeline round trip).
DEFAULT_CHUNK = 1000
#: Largest chord whose header tasks get ``task-sent`` events.
SENT_EVENTS_LIMIT = 10_000
#: Methods :func:`publish_chord` accepts.
METHODS = ("auto", "template", "batch", "canvas")



@dataclass(frozen=True)
class PublishedChord:
    """What :func:`publish_chord` sent.

    Attributes
    ----------
    group_id : str
        The chord's group id (header tasks' ``group`` header).
    body_id : str
        Task id of the ``gather`` callback.
    n_tasks : int
        Header tasks published.
    method : str
        ``template``, ``batch`` or ``canvas``.
    seconds : float
        Wall time of the publication.
    sent_events : bool
        Whether ``task-sent`` events were sent for the header tasks.
    """

    group_id: str
    body_id: str
    n_tasks: int
    method: str
    seconds: float
    sent_events: bool = False

    @property
    def rate(self) -> float:
        """Header tasks per second."""
        return self.n_tasks / self.seconds if self.seconds > 0 else float("inf")


def publish_chord(
    app: Celery,
    job_id: str,
    batches: Sequence[Batch],
    queue: str,
    *,
    method: str = "auto",
    chunk_size: int = DEFAULT_CHUNK,
    sent_events: bool | None = None,
    sent_events_limit: int = SENT_EVENTS_LIMIT,
) -> PublishedChord:
    """Send ``chord([run_batch(job_id, key, indices) per batch], gather(job_id))``.

    Parameters
    ----------
    app : Celery
        A producer app (see :func:`curator_worker.messaging.create_app`).
    job_id : str
        The job, already written to the job store.
    batches : Sequence[Batch]
        The header: one ``curator.run_batch`` task per batch, in this order.
    queue : str
        Queue of the header tasks and of ``gather``.
    method : {"auto", "template", "batch", "canvas"}
        ``auto`` picks ``template`` when the broker and result backend are Redis and
        falls back to ``batch`` (or ``canvas``) when it cannot be used.
    chunk_size : int
        Messages per LPUSH / per producer batch flush.
    sent_events : bool, optional
        Send ``task-sent`` events; default ``app.conf.task_send_sent_event``, and only
        for chords of at most ``sent_events_limit`` headers.
    sent_events_limit : int
        See ``sent_events``.

    Raises
    ------
    ValueError
        For an unknown ``method`` or a bad ``chunk_size``.
    TemplateUnavailable
        When ``method="template"`` is forced and cannot be used.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown publish method {method!r}; use one of {', '.join(METHODS)}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if sent_events is None:
        sent_events = bool(app.conf.task_send_sent_event)
    if sent_events and len(batches) > sent_events_limit:
        log.info(
            "job %s: %d header tasks > %d: no task-sent events (Flower shows tasks once "
            "received)", job_id, len(batches), sent_events_limit,
        )
        sent_events = False
    start = time.perf_counter()
    if method == "canvas" or (method == "auto" and not has_chord_size(app)):
        group_id, body_id = _publish_canvas(app, job_id, batches, queue)
        return PublishedChord(group_id, body_id, len(batches), "canvas",
                              time.perf_counter() - start, bool(app.conf.task_send_sent_event))
    if not has_chord_size(app):
        raise TemplateUnavailable(
            f"The {method!r} method needs Celery's Redis result backend (chord size); "
            f"the app uses {type(app.backend).__name__}."
        )
    group_id, body_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = frozen_body(app, job_id, queue, group_id, body_id)
    used = method
    with app.producer_or_acquire() as producer, ExitStack() as stack:
        if not batches:
            body.apply_async(args=([],), producer=producer)
            return PublishedChord(group_id, body_id, 0, "empty", time.perf_counter() - start)
        publisher: TemplatePublisher | None = None
        if method in ("auto", "template"):
            try:
                client = stack.enter_context(broker_client(producer))
                publisher = TemplatePublisher.capture(
                    app, producer, client, job_id, batches[0], queue, group_id, body
                )
            except TemplateUnavailable as exc:
                if method == "template":
                    raise
                log.info("job %s: template publishing unavailable (%s); batching", job_id, exc)
            used = "template" if publisher is not None else "batch"
        # Celery sets the size just before the last header; we set it before the first,
        # so a header that completes early already sees the whole chord's size.
        set_chord_size(app, group_id, len(batches))
        if publisher is not None:
            publisher.publish(batches, chunk_size, keep=sent_events)
            if sent_events:
                send_sent_events(app, producer, queue, publisher, chunk_size)
        else:  # send_task sends its own task-sent events when they are configured
            _publish_batched(app, producer, job_id, batches, queue, group_id, body, chunk_size)
            sent_events = bool(app.conf.task_send_sent_event)
    seconds = time.perf_counter() - start
    log.info("job %s: published %d header tasks (%s) in %.3fs: %.0f tasks/s", job_id,
             len(batches), used, seconds, len(batches) / max(seconds, 1e-9))
    return PublishedChord(group_id, body_id, len(batches), used, seconds, sent_events)


def frozen_body(app: Celery, job_id: str, queue: str, group_id: str, body_id: str) -> Signature:
    """The ``gather`` callback, frozen the way ``chord.run`` freezes a chord body."""
    body = app.signature(GATHER, args=(job_id,), queue=queue)
    body.freeze(body_id, group_id=group_id)
    return body


def _publish_canvas(
    app: Celery, job_id: str, batches: Sequence[Batch], queue: str
) -> tuple[str, str]:
    """Celery's own chord publication (result backends without a chord size)."""
    header = [
        app.signature(RUN_BATCH, args=(job_id, b.key, b.indices), queue=queue) for b in batches
    ]
    result = chord(header, app.signature(GATHER, args=(job_id,), queue=queue)).apply_async()
    parent = result.parent
    return (parent.id if parent is not None else ""), result.id


def _publish_batched(
    app: Celery,
    producer: Any,
    job_id: str,
    batches: Sequence[Batch],
    queue: str,
    group_id: str,
    body: Signature,
    chunk_size: int,
) -> None:
    """Option A: ``send_task`` per header on one producer inside ``Producer.batch()``."""
    with producer.batch(max_size=chunk_size):
        for index, batch in enumerate(batches):
            app.send_task(
                RUN_BATCH, args=(job_id, batch.key, batch.indices), queue=queue,
                task_id=str(uuid.uuid4()), group_id=group_id, group_index=index,
                chord=body, producer=producer,
            )
