"""Celery's internals we rely on, each behind one small named function or class.

Checked against Celery 5.7.0 (with kombu 5.7.0); ``tests/unit/test_celery_compat.py``
checks each one against the installed version. See ``docs/celery-internals.md``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals
from celery.canvas import Signature
from celery.utils.saferepr import saferepr
from celery.worker.consumer import Consumer
from kombu import Queue

log = logging.getLogger(__name__)

#: Celery's default ``worker_log_format`` (``celery.app.defaults.DEFAULT_PROCESS_LOG_FMT``).
CELERY_WORKER_LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


# --------------------------------------------------------------------------- result backend


def detach_result_tracking(app: Celery) -> None:
    """Producers wait on the job store, never on Celery results.

    Replaces, on ``app.backend`` only, the Redis result backend's ``on_task_call``
    (``RedisBackend.on_task_call(producer, task_id)`` subscribes to a pub/sub channel per
    task sent, celery#3808) and the ``AsyncBackendMixin`` methods ``add_pending_result``,
    ``add_pending_results`` and ``remove_pending_result`` that track the returned
    ``AsyncResult`` objects (their finalizers otherwise reconnect to Redis at interpreter
    exit).
    """
    backend = app.backend
    backend.on_task_call = lambda producer, task_id: None
    backend.add_pending_result = lambda result, *args, **kwargs: result
    backend.add_pending_results = lambda results, *args, **kwargs: list(results)
    backend.remove_pending_result = lambda result: result


def has_chord_size(app: Celery) -> bool:
    """True when the result backend is Celery's Redis backend (chord counters in Redis,
    ``set_chord_size``, joined natively: no ``celery.chord_unlock``)."""
    try:
        from celery.backends.redis import RedisBackend
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(app.backend, RedisBackend)


def set_chord_size(app: Celery, group_id: str, size: int) -> None:
    """Write a chord's header count, as ``group._apply_tasks`` does before its last header
    (``RedisBackend.set_chord_size(group_id, chord_size)``)."""
    app.backend.set_chord_size(group_id, size)


# --------------------------------------------------------------------------- task messages


def publish_hooks_connected() -> bool:
    """Whether ``before_task_publish`` / ``after_task_publish`` have receivers (a message
    built outside ``send_task_message`` would skip them)."""
    return bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)


def direct_queue(app: Celery, name: str) -> Queue | None:
    """``app``'s declaration of queue ``name`` when it is a plain direct queue (no priority,
    no expiry), else ``None`` (``app.amqp.queues``)."""
    target = app.amqp.queues[name]
    if target.exchange.type != "direct" or target.max_priority or target.expires:
        return None
    return target


def send_one_task_message(
    app: Celery, producer: Any, task_id: str, name: str, args: tuple[Any, ...],
    queue: Queue, *, group_id: str, group_index: int, chord: Signature,
    ignore_result: bool | None,
) -> None:
    """Publish one task message exactly as ``send_task`` builds it, on ``queue``.

    ``app.amqp.create_task_message`` (``as_task_v2``: headers, properties, body) and
    ``app.amqp.send_task_message`` with ``reply_to=app.thread_oid``, no ``task-sent`` event
    and no queue declaration (``declare=[]``).
    """
    message = app.amqp.create_task_message(
        task_id, name, args, {}, group_id=group_id, group_index=group_index, chord=chord,
        reply_to=app.thread_oid, create_sent_event=False, ignore_result=ignore_result,
    )
    app.amqp.send_task_message(producer, name, message, queue=queue, declare=[])


def argsrepr_limits(app: Celery) -> tuple[int, int]:
    """``(maxlen, maxlevels)`` of the ``argsrepr`` header ``as_task_v2`` writes
    (``app.amqp.argsrepr_maxsize``, ``task_repr_maxlevels``)."""
    return int(app.amqp.argsrepr_maxsize), int(app.conf.task_repr_maxlevels)


_SIMPLE_TEXT = re.compile(r"[A-Za-z0-9_.:@+=-]*")


def header_argsrepr(args: tuple[str, str, list[int]], maxlen: int, maxlevels: int = 3) -> str:
    """``celery.utils.saferepr.saferepr(args, maxlen, maxlevels)``, fast for our arguments.

    ``saferepr`` (what ``as_task_v2`` puts in the ``argsrepr`` header) walks a token stream
    at about 2 µs per token: 0.7 ms for a batch of 1,000 indices. For
    ``(job_id, batch_key, [int, ...])`` with plain ids this renders the same text from
    one join of the indices that can show (~30 µs): tokens are consumed while ``maxlen``
    is positive, a token at least as long as what is left is cut with ``...``, then
    ``, ...`` and the closing brackets (saferepr's algorithm in Celery 5.7.0). Anything
    else goes to ``saferepr`` itself.
    """
    job_id, key, indices = args
    head = f"('{job_id}', '{key}', ["
    budget = maxlen - len(head)
    # Every index and its ", " take at least 3 characters: these many exhaust the budget.
    shown = min(len(indices), budget // 3 + 2) if type(indices) is list else 0
    if (maxlevels < 3 or len(head) + 8 > maxlen or not _SIMPLE_TEXT.fullmatch(job_id)
            or not _SIMPLE_TEXT.fullmatch(key) or type(indices) is not list
            or not set(map(type, indices[:shown])) <= {int}):
        return saferepr(args, maxlen, maxlevels=maxlevels)
    text = ", ".join(map(str, indices[:shown]))
    if len(text) < budget:  # (only when every index is shown) nothing is cut
        return head + text + "])"
    # The budget ends at text[budget - 1]. In a ", ": the index before it fitted, the
    # ", " was written, and ", ..." follows. In an index: it is cut there, with "...",
    # and ", ..." follows unless it is the last index.
    at = budget - 1
    if text[at] in ", ":
        end = at + (2 if text[at] == "," else 1)
        return head + text[:end] + ", ...])"
    before = text.rfind(", ", 0, at)
    start = before + 2 if before >= 0 else 0
    stop = text.find(", ", at)
    last = stop < 0 and shown == len(indices)
    stop = len(text) if stop < 0 else stop
    cut = text[start:stop][: budget - start] + "..."
    return head + text[:start] + cut + ("" if last else ", ...") + "])"


def task_sent_event(task_id: str, name: str, argsrepr: str, queue: str) -> dict[str, Any]:
    """The fields of a ``task-sent`` event for a task message we published ourselves.

    Those ``as_task_v2`` puts in its ``sent_event`` (for a first, undelayed send with no
    keyword arguments), plus the ``queue``, ``exchange`` and ``routing_key`` that
    ``send_task_message`` adds for a direct queue.
    """
    return {"uuid": task_id, "root_id": task_id, "parent_id": None, "name": name,
            "args": argsrepr, "kwargs": "{}", "retries": 0, "eta": None, "expires": None,
            "queue": queue, "exchange": "", "routing_key": queue}


def send_task_sent_events(app: Celery, producer: Any, name: str, queue: str,
                          sent: Iterable[tuple[str, str]], chunk_size: int) -> None:
    """A :func:`task_sent_event` per ``(task id, argsrepr)`` of ``sent``.

    Published through a disabled event ``Dispatcher`` (``app.events.Dispatcher(
    enabled=False)``: it publishes only on the producer given), buffered in
    ``producer.batch()``.
    """
    dispatcher = app.events.Dispatcher(enabled=False)  # publishes on ``producer`` only
    with dispatcher, producer.batch(max_size=chunk_size):
        for task_id, argsrepr in sent:
            dispatcher.publish("task-sent", task_sent_event(task_id, name, argsrepr, queue),
                               producer)


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class WorkerNode:
    """What a worker node is, read from the ``worker_ready`` signal's sender."""

    name: str
    concurrency: int
    queues: list[str]
    task_events: bool


def worker_node(consumer: Any) -> WorkerNode:
    """The node of ``consumer``, the sender of ``worker_ready`` (Celery's worker
    ``Consumer``): ``hostname``, the pool's ``num_processes`` (else the controller's
    ``concurrency``), the names of ``task_consumer.queues`` and the controller's
    ``task_events`` (``-E``)."""
    return WorkerNode(
        name=consumer.hostname,
        concurrency=int(getattr(consumer.pool, "num_processes", 0)
                        or consumer.controller.concurrency),
        queues=([q.name for q in consumer.task_consumer.queues]
                if consumer.task_consumer else []),
        task_events=bool(getattr(consumer.controller, "task_events", True)),
    )


def worker_controller(app: Celery, *, concurrency: int, hostname: str, queues: list[str],
                      loglevel: str = "WARNING", task_events: bool = True,
                      **options: Any) -> Any:
    """The prefork worker node of ``app`` that ``celery -A APP worker --without-mingle
    --without-gossip`` with these options would start, not started.

    ``celery.bin.worker.worker`` converts its options (``host_format(default_nodename())``,
    ``concurrency.get_implementation()``, ``mlevel()``) and gives them to ``app.Worker``;
    this does the same without Celery's command line, which imports every
    ``celery.commands`` plugin (Flower's web application among them) and a REPL
    (click-repl, prompt_toolkit): about a third of a node's start-up. ``options`` are
    further ``WorkController`` settings (``max_tasks_per_child``, ``max_memory_per_child``).
    """
    from celery import concurrency as pools
    from celery.utils.log import mlevel
    from celery.utils.nodenames import default_nodename, host_format

    return app.Worker(
        hostname=host_format(default_nodename(hostname)),
        pool_cls=pools.get_implementation("prefork"), loglevel=mlevel(loglevel.upper()),
        concurrency=concurrency, queues=queues, task_events=task_events,
        without_mingle=True, without_gossip=True, **options,
    )


def run_worker_node(app: Celery, **options: Any) -> int:
    """Start :func:`worker_controller` ``(app, **options)``, run it until it stops, and
    return its exit code."""
    worker = worker_controller(app, **options)
    worker.start()
    return int(worker.exitcode or 0)


#: Seconds a worker node holds the task events it buffered before sending them together.
TASK_EVENT_FLUSH_DELAY = 0.05
#: A flush scheduled this long ago and not run (the event loop's timers were reset by a
#: reconnection) is scheduled again by the next event.
_STALE_FLUSH = 1.0


class CoalescedEventsConsumer(Consumer):
    """Celery's worker consumer, sending its task events in fewer, larger messages.

    With task events on, a node buffers each task event (``task-received``, ``-started``,
    ``-succeeded``) and Celery flushes the buffer as one ``task.multi`` message on the
    event loop's next turn (``Consumer.on_send_event_buffered``, ``hub.call_soon``): in
    practice a publish per event, about 40 % of a node's main-process CPU per short task
    (``benchmarks/profile_job.py --py-spy``). Here the first buffered event schedules the
    flush :data:`TASK_EVENT_FLUSH_DELAY` later (``hub.call_later``), so the events of that
    window travel together; Flower sees them at most that much later. An event sent from
    another thread is flushed as Celery does, and a shutdown flushes what is buffered.
    """

    _event_flush_due: float | None = None

    def on_send_event_buffered(self) -> None:
        """Schedule one flush of the buffered task events (see the class)."""
        hub = self.hub
        if hub is None:
            return
        if threading.current_thread() is not threading.main_thread():
            hub.call_soon(self._flush_events_promise)  # the timer is the loop thread's
            return
        now = time.monotonic()
        due = self._event_flush_due
        if due is not None and now < due + _STALE_FLUSH:
            return  # a flush is coming
        self._event_flush_due = now + TASK_EVENT_FLUSH_DELAY
        hub.call_later(TASK_EVENT_FLUSH_DELAY, self._flush_coalesced_events)

    def _flush_coalesced_events(self) -> None:
        self._event_flush_due = None
        self._flush_events()

    def shutdown(self) -> None:
        """Send the buffered task events, then shut down as Celery does."""
        try:
            self._flush_events()
        except Exception:  # noqa: BLE001 - a broker gone at shutdown loses only events
            log.debug("task events not flushed at shutdown", exc_info=True)
        super().shutdown()


class FilteringConsumer(CoalescedEventsConsumer):
    """Celery's worker consumer, with a say over which task messages reach a handler.

    Celery's consumer looks each message's task name up in ``strategies`` (one handler per
    registered task, built by ``update_strategies``); unknown names, messages without a
    task name, unreadable messages and undecodable bodies go to ``on_unknown_task``,
    ``on_unknown_message``, ``on_invalid_task`` and ``on_decode_error``. This class keeps
    only :meth:`accepted_tasks`' handlers, puts :meth:`check_message` in front of
    :meth:`guarded_tasks`', and turns every message it will not run into one
    :meth:`refused` call and an acknowledgement (``Message.ack_log_error``), where Celery
    logs the whole message (and a traceback) and stores a failure result for it.

    Subclasses say what is accepted; the worker app names the subclass in
    ``worker_consumer``.
    """

    def accepted_tasks(self) -> frozenset[str]:
        """Names of the tasks this worker runs (others are refused)."""
        raise NotImplementedError

    def guarded_tasks(self) -> frozenset[str]:
        """Names of the tasks whose messages :meth:`check_message` sees first."""
        return frozenset()

    def check_message(self, name: str, message: Any, body: Any) -> str | None:
        """Why the message of task ``name`` must not run, or ``None``.

        ``message`` is kombu's ``Message`` (``headers``, ``body``, ``payload``); ``body``
        is ``None`` for Celery's protocol 2 (the payload is decoded on demand).
        """
        return None

    def refused(self, name: object, task_id: object, reason: str) -> None:
        """Say that a message was dropped (called once per dropped message)."""
        log.warning("Rejected task message %s[%s]: %s", name, task_id, reason)

    def update_strategies(self) -> None:
        """Build Celery's handlers, then keep and guard only the accepted tasks'."""
        super().update_strategies()
        accepted, guarded = self.accepted_tasks(), self.guarded_tasks()
        for name in list(self.strategies):
            if name not in accepted:
                del self.strategies[name]
            elif name in guarded:
                self.strategies[name] = self._guarded(name, self.strategies[name])

    def _guarded(self, name: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        def check_then_handle(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
            problem = self.check_message(name, message, body)
            if problem:
                self.refused(name, (message.headers or {}).get("id"), problem)
                return self.drop(message)
            return handler(message, body, *args, **kwargs)

        return check_then_handle

    def drop(self, message: Any) -> None:
        """Acknowledge ``message`` without running it (errors logged, not raised)."""
        message.ack_log_error(log, self.connection_errors)

    def _refuse(self, message: Any, reason: str) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        self.refused(headers.get("task"), headers.get("id"), reason)
        self.drop(message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A task name this worker does not run: refused, acknowledged."""
        accepted = ", ".join(sorted(self.accepted_tasks()))
        self._refuse(message, f"this worker runs only {accepted}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """A message that names no task: refused, acknowledged."""
        self._refuse(message, "the message names no task")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A message Celery cannot read (content type refused, bad headers)."""
        self._refuse(message, f"{type(exc).__name__}: {printable(exc, 300)}")

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """A body that cannot be decoded: refused, acknowledged."""
        self._refuse(message, f"cannot decode the body ({printable(message.content_type)}): "
                     f"{type(exc).__name__}: {printable(exc, 300)}")


def printable(value: object, limit: int = 100) -> str:
    """``value`` as printable ASCII on one line, at most about ``limit`` characters (a
    crafted message's name, id or error in a log line)."""
    text = value if isinstance(value, str) else repr(value)
    shown = ascii(text)[1:-1]
    return shown if len(shown) <= limit else f"{shown[:limit]}...({len(text)} characters)"


def set_worker_log_format(logger: logging.Logger, fmt: str,
                          log_filter: Callable[[], logging.Filter]) -> None:
    """Replace the formatter of the handlers Celery set up on ``logger``.

    Called from ``after_setup_logger`` / ``after_setup_task_logger``: Celery has put its
    handlers (with its ``ColorFormatter`` / ``TaskFormatter``) on ``logger``; each gets a
    plain ``logging.Formatter(fmt)`` and one filter made by ``log_filter`` (a handler that
    already has a filter of that type keeps it).
    """
    for handler in logger.handlers:
        made = log_filter()
        if not any(isinstance(f, type(made)) for f in handler.filters):
            handler.addFilter(made)
        handler.setFormatter(logging.Formatter(fmt))
