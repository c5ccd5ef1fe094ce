"""Contract tests: the Celery and kombu internals we rely on, against the installed versions.

Each test exercises one thing :mod:`curator_worker.compat` relies on; an upgrade that
changes it fails here with a message naming what changed (see docs/celery-internals.md).
The kombu Redis transport's behaviour (envelopes, ``unacked``, ``unacked_index`` scores) is
checked against a real Redis in tests/integration/test_celery_compat.py.
"""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from celery import Celery, signals
from celery.utils.saferepr import saferepr
from kombu import Exchange, Queue
from packaging.requirements import Requirement

from curator_worker.compat import CHECKED_VERSIONS
from curator_worker.compat import celery as compat
from curator_worker.compat import kombu as kombu_compat
from curator_worker.config import Settings
from curator_worker.messaging import GATHER, RUN_BATCH, create_app
from curator_worker.trust import GuardedConsumer
from curator_worker.worker.log_context import WORKER_LOG_FORMAT
from producer.publish import frozen_body

ROOT = Path(__file__).resolve().parents[2]
#: Nothing listens on port 1: anything that connects fails at once.
DEAD_REDIS = "redis://127.0.0.1:1/0"


def params(function: object) -> list[str]:
    """The parameter names of ``function`` (without ``self``)."""
    return [p for p in inspect.signature(function).parameters if p != "self"]


def expect_params(where: str, function: object, names: list[str]) -> None:
    got = params(function)
    missing = [n for n in names if n not in got]
    assert not missing, (f"{where} no longer takes {missing} (it takes {got}): "
                         "curator_worker/compat relies on them; see docs/celery-internals.md")


@pytest.fixture(scope="module")
def producer_app() -> Iterator[Celery]:
    app = create_app(Settings(broker_url=DEAD_REDIS))
    yield app
    app.close()


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize("name", ["celery", "kombu", "redis", "flower"])
def test_installed_versions_are_within_the_bounds_of_pyproject(name: str) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirement = next(Requirement(d) for d in deps if Requirement(d).name == name)
    assert any(s.operator == "<" for s in requirement.specifier), (
        f"{name} has no upper bound in pyproject.toml")
    assert requirement.specifier.contains(version(name)), (
        f"installed {name} {version(name)} is outside {requirement}")


@pytest.mark.parametrize("name", sorted(CHECKED_VERSIONS))
def test_installed_minor_versions_are_the_checked_ones(name: str) -> None:
    installed, checked = version(name).split(".")[:2], CHECKED_VERSIONS[name].split(".")[:2]
    assert installed == checked, (
        f"{name} {version(name)} is installed; curator_worker/compat was checked with "
        f"{CHECKED_VERSIONS[name]}: run these contract tests, then update CHECKED_VERSIONS")


# --------------------------------------------------------------------------- result backend


def test_result_tracking_methods_we_replace_exist_with_their_signatures() -> None:
    from celery.backends.redis import RedisBackend

    expect_params("RedisBackend.on_task_call", RedisBackend.on_task_call,
                  ["producer", "task_id"])
    expect_params("RedisBackend.add_pending_result", RedisBackend.add_pending_result,
                  ["result", "weak"])
    expect_params("RedisBackend.add_pending_results", RedisBackend.add_pending_results,
                  ["results", "weak"])
    expect_params("RedisBackend.remove_pending_result", RedisBackend.remove_pending_result,
                  ["result"])
    expect_params("RedisBackend.set_chord_size", RedisBackend.set_chord_size,
                  ["group_id", "chord_size"])


def test_a_producer_app_never_subscribes_to_results(producer_app: Celery) -> None:
    """Celery's own ``on_task_call`` subscribes at once (and fails on a dead Redis)."""
    # one reconnect, not Celery's default 20 at 1 s each: failing is the point, not how long
    stock = Celery(broker=DEAD_REDIS, backend=DEAD_REDIS,
                   result_backend_transport_options={"retry_policy": {"max_retries": 1}})
    with pytest.raises(Exception):  # noqa: B017,PT011 - whatever redis-py raises there
        stock.backend.on_task_call(None, "t1")
    assert producer_app.backend.on_task_call(None, "t1") is None
    result = producer_app.AsyncResult("t1")
    assert producer_app.backend.add_pending_result(result) is result
    assert producer_app.backend.add_pending_results([result]) == [result]


def test_chord_size_is_known_for_the_redis_backend_only(producer_app: Celery) -> None:
    assert compat.has_chord_size(producer_app)
    assert not compat.has_chord_size(Celery(backend="cache+memory://"))


# --------------------------------------------------------------------------- task messages


def test_the_task_message_a_template_publish_copies(producer_app: Celery) -> None:
    expect_params("app.amqp.create_task_message (as_task_v2)",
                  producer_app.amqp.create_task_message,
                  ["task_id", "name", "args", "kwargs", "group_id", "group_index", "chord",
                   "reply_to", "create_sent_event", "ignore_result"])
    expect_params("app.amqp.send_task_message", producer_app.amqp.send_task_message,
                  ["producer", "name", "message", "queue", "declare"])
    assert isinstance(producer_app.thread_oid, str)
    group_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = frozen_body(producer_app, "job-1", "q", group_id, str(uuid.uuid4()))
    args = ("job-1", "b000000", list(range(400)))
    message = producer_app.amqp.create_task_message(
        task_id, RUN_BATCH, args, {}, group_id=group_id, group_index=0, chord=body,
        reply_to=producer_app.thread_oid, create_sent_event=True, ignore_result=True)
    headers, _, payload, sent_event = message
    for field in ("id", "task", "group", "group_index", "argsrepr"):
        assert field in headers, f"Celery's task headers have no {field!r} any more"
    assert (headers["id"], headers["task"], headers["group"]) == (task_id, RUN_BATCH, group_id)
    assert list(payload[0]) == list(args) and payload[1] == {}, "body is not [args, kwargs, .]"
    assert payload[2]["chord"]["task"] == GATHER, "the chord body is not in the embed"
    maxlen, maxlevels = compat.argsrepr_limits(producer_app)
    assert headers["argsrepr"] == compat.header_argsrepr(args, maxlen, maxlevels), (
        "Celery's argsrepr header is no longer saferepr(args, argsrepr_maxsize, "
        "task_repr_maxlevels): header_argsrepr must follow it")
    ours = compat.task_sent_event(task_id, RUN_BATCH, headers["argsrepr"], "q")
    assert set(ours) == set(sent_event) | {"queue", "exchange", "routing_key"}, (
        f"task-sent event fields changed: Celery sends {sorted(sent_event)}")
    same = set(sent_event) - {"root_id"}  # send_task passes root_id=task_id; so do we
    assert {k: ours[k] for k in same} == {k: sent_event[k] for k in same}


@pytest.mark.parametrize("n", [1, 3, 50, 200, 1000])
def test_header_argsrepr_is_celerys_saferepr(n: int) -> None:
    args = ("20261130-120000-abcdef12", "r2-b000003", list(range(10_000, 10_000 + n)))
    for maxlen in (64, 300, 1024):
        assert compat.header_argsrepr(args, maxlen) == saferepr(args, maxlen, maxlevels=3)


def test_publish_hooks_and_plain_direct_queues(producer_app: Celery) -> None:
    assert not compat.publish_hooks_connected()

    def receiver(**_: object) -> None:
        pass

    signals.before_task_publish.connect(receiver)
    try:
        assert compat.publish_hooks_connected(), "publish signal receivers are not listed"
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert isinstance(compat.direct_queue(producer_app, "plain-q"), Queue)
    app = Celery(broker=DEAD_REDIS)
    app.conf.task_queues = [Queue("prio", Exchange("prio"), max_priority=9)]
    assert compat.direct_queue(app, "prio") is None


# --------------------------------------------------------------------------- the worker


def test_consumer_hooks_we_override_exist_with_their_signatures() -> None:
    from celery.worker.consumer import Consumer
    from kombu.message import Message

    assert compat.FilteringConsumer.__mro__[1:3] == (compat.CoalescedEventsConsumer, Consumer)
    expect_params("Consumer.on_send_event_buffered", Consumer.on_send_event_buffered, [])
    expect_params("Consumer._flush_events", Consumer._flush_events, [])
    expect_params("Consumer.shutdown", Consumer.shutdown, [])
    expect_params("Consumer.update_strategies", Consumer.update_strategies, [])
    expect_params("Consumer.on_unknown_task", Consumer.on_unknown_task,
                  ["body", "message", "exc"])
    expect_params("Consumer.on_unknown_message", Consumer.on_unknown_message,
                  ["body", "message"])
    expect_params("Consumer.on_invalid_task", Consumer.on_invalid_task,
                  ["body", "message", "exc"])
    expect_params("Consumer.on_decode_error", Consumer.on_decode_error, ["message", "exc"])
    expect_params("kombu Message.ack_log_error", Message.ack_log_error, ["logger", "errors"])


@pytest.mark.parametrize("task_events", [True, False])
def test_a_worker_uses_our_consumer_and_we_read_its_node(task_events: bool) -> None:
    """A real (unstarted) worker of our app: its consumer class comes from
    ``worker_consumer``, keeps only our tasks' handlers, and has the attributes
    :func:`worker_node` reads."""
    app = create_app(Settings(broker_url=DEAD_REDIS), with_tasks=True)
    try:
        worker = app.WorkController(pool_cls="solo", concurrency=1, hostname="c@contract",
                                    task_events=task_events, without_heartbeat=True,
                                    without_mingle=True, without_gossip=True)
        consumer = worker.consumer
        assert isinstance(consumer, GuardedConsumer), "worker_consumer is no longer honoured"
        assert isinstance(consumer.strategies, dict), "Consumer.strategies is not a mapping"
        consumer.update_strategies()
        assert sorted(consumer.strategies) == [GATHER, RUN_BATCH]
        assert consumer.strategies[RUN_BATCH].__name__ == "check_then_handle"
        assert consumer.connection_errors, "Consumer.connection_errors is gone"
        node = compat.worker_node(consumer)
        assert (node.name, node.concurrency, node.queues) == ("c@contract", 1, [])
        assert "task_events" in vars(worker), "WorkController.task_events is gone"
        assert node.task_events is task_events
    finally:
        app.close()


@pytest.mark.filterwarnings("ignore:You're running the worker with superuser")
def test_a_node_started_without_celerys_command_line_is_the_one_it_would_start() -> None:
    """``python -m curator_worker.worker`` builds the node as ``celery worker`` does."""
    app = create_app(Settings(broker_url=DEAD_REDIS), with_tasks=True)
    try:
        worker = compat.worker_controller(app, concurrency=3, hostname="n1@%h",
                                          queues=["q1", "q2"], loglevel="info",
                                          task_events=False, max_tasks_per_child=7)
        assert worker.hostname.startswith("n1@") and "%h" not in worker.hostname
        assert worker.pool_cls.__module__ == "celery.concurrency.prefork"
        assert (worker.concurrency, worker.loglevel) == (3, logging.INFO)
        assert worker.task_events is False and worker.max_tasks_per_child == 7
        assert sorted(app.amqp.queues.consume_from) == ["q1", "q2"]
        steps = {type(s).__name__ for s in worker.consumer.steps}
        assert not steps & {"Mingle", "Gossip"}, steps
        assert isinstance(worker.consumer, GuardedConsumer)
    finally:
        app.close()


def test_celerys_worker_log_format_is_the_one_we_extend() -> None:
    assert Celery().conf.worker_log_format == compat.CELERY_WORKER_LOG_FORMAT, (
        "Celery's default worker_log_format changed: update CELERY_WORKER_LOG_FORMAT")
    assert WORKER_LOG_FORMAT.endswith("%(curator)s%(message)s")


def test_worker_log_lines_carry_the_batch_context() -> None:
    """Celery sets up a worker's logging and hands us its logger (after_setup_logger); our
    format and filter replace its formatter on every handler."""
    code = (
        "import logging\n"
        "import curator_worker.worker.tasks\n"
        "from curator_worker.worker.app import app\n"
        "from curator_worker.worker import log_context\n"
        "app.log.setup_logging_subsystem(loglevel='INFO', colorize=False)\n"
        "with log_context.batch_context('job-7', 'b000003'):\n"
        "    log_context.set_index(42)\n"
        "    logging.getLogger('user.component').warning('hello')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CURATOR_BROKER_URL": DEAD_REDIS}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stderr.splitlines() if "hello" in x)
    assert line.startswith("[") and "WARNING/MainProcess]" in line, line
    assert line.endswith("[job=job-7 batch=b000003 index=42] hello"), line


# --------------------------------------------------------------------------- kombu names


def test_kombu_redis_key_names_and_options() -> None:
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    assert Channel.unacked_key == kombu_compat.DEFAULT_UNACKED
    assert Channel.unacked_index_key == kombu_compat.DEFAULT_UNACKED_INDEX
    assert Channel.sep == kombu_compat.DEFAULT_SEP
    assert tuple(PRIORITY_STEPS) == kombu_compat.DEFAULT_PRIORITY_STEPS
    options = set(Channel.from_transport_options)
    # the names above, and the restore sweep's tuning that config.celery_config sets
    for name in ("unacked_key", "unacked_index_key", "sep", "priority_steps",
                 "global_keyprefix", "visibility_timeout", "unacked_restore_interval",
                 "unacked_restore_throttle", "unacked_mutex_expire"):
        assert name in options, f"kombu's Redis transport no longer takes the {name} option"
    assert callable(getattr(Channel, "conn_or_acquire", None)), "Channel.conn_or_acquire gone"


def test_kombu_names_its_redis_transport_as_we_check() -> None:
    from kombu import Connection

    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"):
        assert Connection(url).transport_cls in kombu_compat.REDIS_TRANSPORTS


def test_kombu_producer_batches_publishes() -> None:
    """``Producer.batch(max_size=)`` (kombu 5.7): the ``batch`` publish method and
    :func:`~curator_worker.compat.celery.send_task_sent_events` buffer in it."""
    from kombu import Producer

    expect_params("kombu Producer.batch", Producer.batch, ["max_size"])


def test_kombu_decompresses_while_building_a_message_and_the_refusal_keeps_it_small() -> None:
    """kombu inflates a compressed body in ``Message.__init__`` (before a consumer sees
    it); with :func:`refuse_compressed_bodies` the body stays as it came, with an error."""
    import zlib

    from kombu import compression
    from kombu.message import Message

    from curator_worker.compat.kombu import refuse_compressed_bodies

    raw = b"x" * 100_000
    small, content_type = compression.compress(raw, "zlib")
    assert len(small) < 1000
    saved = dict(compression._decoders)  # a worker consumer made here already refused them
    try:
        compression._decoders[content_type] = zlib.decompress
        assert Message(body=small, headers={"compression": content_type}).body == raw, \
            "kombu no longer decompresses in Message.__init__: review refuse_compressed_bodies"
        refuse_compressed_bodies()
        message = Message(body=small, headers={"compression": content_type})
        assert message.body == small and message.errors
    finally:
        compression._decoders.clear()
        compression._decoders.update(saved)


def _bare_channel() -> object:
    """A kombu Redis channel with pools of its own and no connection made (``__init__``
    pings the server; the client factory does not need it)."""
    import redis
    from kombu.transport.redis import Channel

    channel = Channel.__new__(Channel)
    channel.Client = redis.Redis  # what __init__ picks without a key prefix
    channel._pool = redis.ConnectionPool.from_url(DEAD_REDIS)
    channel._async_pool = redis.ConnectionPool.from_url(DEAD_REDIS)
    return channel


def test_kombu_redis_channels_reuse_one_synchronous_client() -> None:
    import redis

    kombu_compat.reuse_channel_clients()
    kombu_compat.reuse_channel_clients()  # idempotent: wrapped once
    channel = _bare_channel()
    first = channel._create_client()
    assert isinstance(first, redis.Redis)
    assert channel._create_client() is first
    assert first.connection_pool is channel._pool
    with channel.conn_or_acquire() as client:  # what publishes and acks go through
        assert client is first
    assert channel._create_client(asynchronous=True) is not channel._create_client(
        asynchronous=True)  # the poller's client is left alone
    channel._pool = redis.ConnectionPool.from_url(DEAD_REDIS)  # reconnected, or forked
    renewed = channel._create_client()
    assert renewed is not first and renewed.connection_pool is channel._pool
    assert _bare_channel()._create_client() is not renewed  # one client per channel


def test_apps_reuse_kombu_channel_clients() -> None:
    from kombu.transport.redis import Channel

    create_app(Settings(broker_url=DEAD_REDIS, result_backend=DEAD_REDIS))
    assert getattr(Channel._create_client, "_curator_reuses", False)


class _Hub:
    """What the consumer asks of kombu's event loop, recorded."""

    def __init__(self) -> None:
        self.later: list[tuple[float, object]] = []
        self.soon: list[object] = []

    def call_later(self, delay: float, callback: object) -> None:
        self.later.append((delay, callback))

    def call_soon(self, callback: object) -> None:
        self.soon.append(callback)


def test_task_events_are_flushed_together_after_a_short_delay() -> None:
    import threading

    from celery.worker.consumer import Consumer

    # the hooks we override and call exist with these names
    assert callable(Consumer.on_send_event_buffered) and callable(Consumer._flush_events)
    assert "_flush_events_promise" in inspect.getsource(Consumer.__init__)
    consumer = compat.CoalescedEventsConsumer.__new__(compat.CoalescedEventsConsumer)
    consumer.hub = hub = _Hub()
    flushed: list[int] = []
    consumer._flush_events = lambda: flushed.append(1)  # type: ignore[method-assign]
    consumer._flush_events_promise = "promise"
    for _ in range(5):  # five events buffered in the window: one flush scheduled
        consumer.on_send_event_buffered()
    assert [delay for delay, _ in hub.later] == [compat.TASK_EVENT_FLUSH_DELAY]
    assert hub.soon == [] and flushed == []
    hub.later[0][1]()  # the timer fires
    assert flushed == [1]
    consumer.on_send_event_buffered()  # the next event schedules the next flush
    assert len(hub.later) == 2
    consumer._event_flush_due -= 10  # its timer was lost (the loop reset): scheduled again
    consumer.on_send_event_buffered()
    assert len(hub.later) == 3
    worker = threading.Thread(target=consumer.on_send_event_buffered)
    worker.start()
    worker.join()
    assert hub.soon == ["promise"]  # from another thread: Celery's immediate flush
