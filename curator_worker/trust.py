"""What a worker accepts from its queue: only messages that point at work a job planned.

A task message is only a pointer into the job store: ``curator.run_batch(job_id,
batch_key, indices)`` and ``curator.gather(batch_keys, job_id)``. Anyone who can put a
message on the queue (or an authenticated Flower user, through ``/api/task/async-apply``)
can craft one, so a worker checks every message before it writes anything:

In the worker's main process (:class:`GuardedConsumer`, before a pool process sees it)
    - only this project's two tasks run (and Celery's ``celery.chord_unlock``, only with a
      result backend that cannot join chords itself: Redis can); Celery's other built-in
      tasks (``celery.backend_cleanup``, ``celery.chord``, ``celery.group``, ...) and
      unknown names are dropped;
    - a message larger than :data:`DEFAULT_MAX_MESSAGE_BYTES` (``CURATOR_MAX_MESSAGE_BYTES``),
      or a compressed one (it would be decompressed before any check of its size)
      is dropped before its body is decoded;
    - the arguments must have the shapes our producers send (:func:`message_problem`): job
      ids and batch keys are safe names (:func:`curator_worker.batch.is_safe_name`), no
      keyword arguments, no callbacks, and a chord callback only ``curator.gather``.
In the pool process, before the batch starts (:func:`unplanned_batch`, :func:`unknown_job`)
    - the job exists, and the batch key is one it planned (at submit or in a retry round)
      with exactly its indices: the plan's text compared with the message's, in the
      script that begins the batch (:meth:`JobStore.begin_batch`), before it writes
      anything; :func:`unplanned_batch` then says which check failed.

A message that fails a check is logged in one line (:func:`refuse`) and acknowledged:
never run, never retried, never a traceback, no file and no job store write. Everything
here that reaches into Celery's worker internals is in
:class:`curator_worker.compat.celery.FilteringConsumer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from curator_worker.compat.celery import FilteringConsumer, printable
from curator_worker.compat.kombu import refuse_compressed_bodies
from curator_worker.message_size import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES_VARIABLE,
    message_bytes_cap,
)
from curator_worker.messaging import GATHER, RUN_BATCH
from curator_worker.shards import is_safe_name
from curator_worker.store import JobStore
from curator_worker.store.keys import plan_entry

log = logging.getLogger(__name__)

#: Every rejection line starts with this.
REJECTED = "Rejected task message"

#: Celery's built-in task a chord needs when the result backend cannot join (not Redis).
CHORD_UNLOCK = "celery.chord_unlock"

#: How far ahead a ``curator.gather`` message may be scheduled (its retries back off).
MAX_GATHER_DELAY = timedelta(days=1)


def max_message_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The message size cap from ``CURATOR_MAX_MESSAGE_BYTES`` (default 16 MiB).

    Commands refuse a bad value at start (:func:`~curator_worker.config.check_environment`);
    a worker started otherwise reports it in one line and uses the default.
    """
    env = os.environ if environ is None else environ
    raw = env.get(MAX_MESSAGE_BYTES_VARIABLE, "")
    cap = message_bytes_cap(raw)
    if cap is not None:
        return cap
    log.error("%s=%s is not a whole number of bytes from 1 to 2**30; using the default %d. Fix the "
              "variable.", MAX_MESSAGE_BYTES_VARIABLE, _show(raw), DEFAULT_MAX_MESSAGE_BYTES)
    return DEFAULT_MAX_MESSAGE_BYTES


def refuse(name: object, task_id: object, reason: str) -> None:
    """Log, in one line, that a task message was dropped and why."""
    log.warning("%s %s[%s]: %s; dropped without running (acknowledged).", REJECTED,
                "(no task name)" if name is None else printable(name), printable(task_id), reason)


def _show(value: object) -> str:
    """A crafted value in a log line: its repr, ASCII only, shortened."""
    shown = ascii(value)
    return shown if len(shown) <= 80 else f"{shown[:80]}...({len(shown)} characters)"


# --------------------------------------------------------------------------- shapes


def message_problem(name: str, payload: Any, headers: Mapping[str, Any]) -> str | None:
    """What is wrong with a decoded protocol-2 message of task ``name``, or ``None``.

    ``payload`` is the message body, ``[args, kwargs, embed]``. Only the shapes our
    producers send pass: ``curator.run_batch(job_id, batch_key, indices)`` with safe names
    and a non-empty list of indices, and ``curator.gather(batch_keys, job_id)``; no
    keyword arguments; no callbacks, errbacks or chain; a chord callback only on a batch,
    and only ``curator.gather``. Whether the job planned the batch is checked later, in
    the pool process (:func:`unplanned_batch`).
    """
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        return "the body is not [args, kwargs, embed] (Celery's message protocol 2)"
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple):
        return f"args must be a list, got {type(args).__name__}"
    if kwargs:
        keys = sorted(map(str, kwargs)) if isinstance(kwargs, dict) else kwargs
        return f"keyword arguments are not accepted, got {_show(keys)}"
    embed_problem = _embed_problem(name, embed)
    if embed_problem:
        return embed_problem
    if name == RUN_BATCH:
        return _batch_args_problem(args) or _eta_problem(headers, timedelta(0))
    if name == GATHER:
        return _gather_args_problem(args) or _eta_problem(headers, MAX_GATHER_DELAY)
    return None


def _batch_args_problem(args: list[Any] | tuple[Any, ...]) -> str | None:
    if len(args) != 3:
        return f"{RUN_BATCH} takes (job_id, batch_key, indices), got {len(args)} arguments"
    job_id, batch_key, indices = args
    return (_name_problem("job id", job_id) or _name_problem("batch key", batch_key)
            or (None if isinstance(indices, list) and indices else
                f"indices must be a non-empty list, got {_show(indices)}"))


def _gather_args_problem(args: list[Any] | tuple[Any, ...]) -> str | None:
    if len(args) != 2:
        return f"{GATHER} takes (batch_keys, job_id), got {len(args)} arguments"
    batch_keys, job_id = args
    if batch_keys is not None and not (
        isinstance(batch_keys, list) and all(isinstance(k, str) for k in batch_keys)
    ):
        return f"batch keys must be a list of strings, got {_show(batch_keys)}"
    return _name_problem("job id", job_id)


def _name_problem(what: str, value: Any) -> str | None:
    if is_safe_name(value):
        return None
    return f"{what} {_show(value)} is not a name a job can have"


def _embed_problem(name: str, embed: Any) -> str | None:
    if embed is None:
        return None
    if not isinstance(embed, dict):
        return f"the embed must be a mapping, got {type(embed).__name__}"
    for part in ("callbacks", "errbacks", "chain"):
        if embed.get(part):
            return f"{part} are not accepted"
    chord = embed.get("chord")
    if chord is None:
        return None
    if name != RUN_BATCH or not isinstance(chord, dict) or chord.get("task") != GATHER:
        shown = chord.get("task") if isinstance(chord, dict) else chord
        return f"a chord callback {_show(shown)} is not accepted on {name}"
    return None


def _eta_problem(headers: Mapping[str, Any], longest: timedelta) -> str | None:
    eta = headers.get("eta")
    if eta is None:
        return None
    if longest <= timedelta(0):
        return "a delayed run (eta) is not accepted"
    try:
        when = datetime.fromisoformat(str(eta))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        late = when - datetime.now(UTC) > longest
    except (ValueError, OverflowError):
        return f"the eta {_show(eta)} is not a time"
    return f"the eta {_show(eta)} is too far ahead" if late else None


# --------------------------------------------------------------------------- the plan


def unplanned_batch(
    store: JobStore, job_id: str, batch_key: str, indices: list[Any]
) -> str | None:
    """Why job ``job_id`` did not plan batch ``batch_key`` with ``indices``, or ``None``.

    One lookup when the batch is planned: the plan's stored text
    (:func:`~curator_worker.store.plan_entry`) is compared with the message's indices
    encoded the same way, so an index of another type (``"0"``, ``0.0``, ``true``), order
    or count does not match.
    """
    planned = store.planned_indices(job_id, batch_key)
    if planned is not None and planned == plan_entry(indices).encode():
        return None
    if planned is not None:
        return (f"indices {_show(indices)} are not the ones job {job_id} planned for batch "
                f"{batch_key}")
    if store.state(job_id) is None:
        return f"no job {job_id} in the job store"
    return f"job {job_id} planned no batch {batch_key}"


def unknown_job(store: JobStore, job_id: str) -> str | None:
    """Why there is no job ``job_id`` to gather, or ``None``."""
    return None if store.state(job_id) is not None else f"no job {job_id} in the job store"


# --------------------------------------------------------------------------- the consumer


def accepted_tasks(app: Any) -> frozenset[str]:
    """The task names a worker of ``app`` runs."""
    names = {RUN_BATCH, GATHER}
    if not getattr(app.backend, "supports_native_join", False):
        names.add(CHORD_UNLOCK)  # chords on such a backend are joined by polling
    return frozenset(names)


class GuardedConsumer(FilteringConsumer):
    """Celery's worker consumer, checking every task message before it runs.

    The worker app names it in ``worker_consumer`` (:func:`curator_worker.messaging.create_app`).
    It keeps only :func:`accepted_tasks`' handlers and puts the size and shape checks in
    front of our tasks'; every message it cannot run is one :func:`refuse` line and an
    acknowledgement. How that hooks into Celery's consumer is
    :class:`curator_worker.compat.celery.FilteringConsumer`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_message_bytes = max_message_bytes()
        refuse_compressed_bodies()  # before a compressed body can inflate

    def accepted_tasks(self) -> frozenset[str]:
        """See :func:`accepted_tasks`."""
        return accepted_tasks(self.app)

    def guarded_tasks(self) -> frozenset[str]:
        """This project's two tasks."""
        return frozenset((RUN_BATCH, GATHER))

    def check_message(self, name: str, message: Any, body: Any) -> str | None:
        """Size, then protocol, then :func:`message_problem`."""
        limit = self.max_message_bytes
        size = message_bytes(message)
        if size > limit:
            return (f"the message is {size} bytes, over the limit of {limit} "
                    f"({MAX_MESSAGE_BYTES_VARIABLE})")
        if (message.headers or {}).get("compression"):
            # our producers never compress; kombu left the body as it came
            # (refuse_compressed_bodies), so it never inflated
            return "compressed messages are not accepted"
        if body is not None:
            return "Celery's message protocol 1 is not accepted"
        # decoding raises for a body that is not JSON: Celery's handlers log it
        return message_problem(name, message.payload, message.headers or {})

    def refused(self, name: object, task_id: object, reason: str) -> None:
        """See :func:`refuse`."""
        refuse(name, task_id, reason)


def message_bytes(message: Any) -> int:
    """Size of a received message: its body and its headers' text (a close estimate)."""
    size = len(message.body or b"")
    for key, value in (message.headers or {}).items():
        size += len(key) + (len(value) if isinstance(value, str | bytes) else len(repr(value)))
    return size
