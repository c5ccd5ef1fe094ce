"""Crafted task messages: a worker runs only what a job planned, and drops the rest.

Each test plays someone who can put a message on the queue (or an authenticated Flower
user through ``/api/task/async-apply``, which sends exactly such messages). It publishes
crafted messages to the test session's worker nodes (``tests/conftest.py``) for a job that
is planned in the job store but not yet sent, and checks that each message was dropped
with one log line, with no traceback; that the job's keys in the job store are unchanged
and no file was written; and then that the workers are still healthy and the job's own
batches run and finish it exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from curator_worker.config import Settings
from curator_worker.contract.planning import Batch
from curator_worker.messaging import GATHER, RUN_BATCH, create_app
from curator_worker.store import RUNNING, SUCCEEDED, JobStore, new_job_id
from curator_worker.store.keys import delivery_tags_key
from curator_worker.trust import unknown_job, unplanned_batch
from producer.submit import publish_chord
from producer.wait import wait_for_job
from tests.conftest import NODE_NAMES, TEST_QUEUE
from tests.support.cluster import WorkerNode
from tests.support.specs import stats_spec

#: What every rejection line says (and nothing else a worker logs does).
REJECTED = "Rejected task message"


@dataclass
class PlannedJob:
    """A job written to the job store with its plan, whose batches were not sent yet."""

    job_id: str
    batches: list[Batch]
    out: Path

    @property
    def total(self) -> int:
        return sum(len(b.indices) for b in self.batches)


@pytest.fixture()
def app(cluster_settings: Settings) -> Iterator[Celery]:
    """A producer app of the test cluster (what an attacker's or Flower's client is)."""
    producer = create_app(cluster_settings)
    yield producer
    producer.close()


@pytest.fixture()
def job(tmp_path: Path, store: JobStore) -> PlannedJob:
    """Six indices in two planned batches, written to the job store as submit does."""
    out = tmp_path / "out"
    spec = {k: v for k, v in stats_spec(out, 6).items() if k != "metadata"}
    batches = [Batch("b000000", [0, 1, 2]), Batch("b000001", [3, 4, 5])]
    job_id = new_job_id()
    store.create_job(job_id, spec, {"batch_size": 3}, [(b.key, b.indices) for b in batches],
                     total=6, queue=TEST_QUEUE)
    return PlannedJob(job_id, batches, out)


def send(app: Celery, name: str, args: Any = (), kwargs: Any = None) -> str:
    """Publish a task message by name, as any client can; return its task id."""
    task_id = str(uuid.uuid4())
    app.send_task(name, args=args, kwargs=kwargs, queue=TEST_QUEUE, task_id=task_id)
    return task_id


def log_sizes(nodes: list[WorkerNode]) -> list[int]:
    return [node.log.stat().st_size for node in nodes]


def logs_since(nodes: list[WorkerNode], since: list[int]) -> str:
    parts = []
    for node, offset in zip(nodes, since, strict=True):
        with open(node.log, "rb") as f:
            f.seek(offset)
            parts.append(f.read().decode(errors="replace"))
    return "\n".join(parts)


def rejection_lines(text: str, task_id: str) -> list[str]:
    return [line for line in text.splitlines() if REJECTED in line and task_id in line]


def wait_for_rejections(nodes: list[WorkerNode], since: list[int], task_ids: list[str],
                        timeout: float = 30.0, settle: float = 2.0) -> str:
    """Wait until every message in ``task_ids`` was rejected, then ``settle`` seconds more
    (a message wrongly run or requeued would show by then); return the logs since."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = logs_since(nodes, since)
        if all(rejection_lines(text, t) for t in task_ids):
            break
        time.sleep(0.1)
    time.sleep(settle)
    return logs_since(nodes, since)


def assert_rejected_once_each(text: str, task_ids: list[str]) -> None:
    """One rejection line per message, and no traceback or error anywhere in ``text``."""
    for task_id in task_ids:
        lines = rejection_lines(text, task_id)
        assert len(lines) == 1, f"{task_id}: {lines or 'not rejected'}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-5000:]
    bad = [line for line in text.splitlines() if "ERROR/" in line or "CRITICAL/" in line]
    assert not bad, bad


def snapshot(store: JobStore, job_id: str) -> dict[str, Any]:
    """Every key of the job (job store and lease tags), with its contents."""
    client = store.client
    keys = set(client.scan_iter(match=f"{store.key(job_id)}*")) | {
        store.key(job_id).encode(), delivery_tags_key(job_id).encode()}
    out: dict[str, Any] = {}
    for key in sorted(keys):
        kind = client.type(key).decode()
        if kind == "hash":
            out[key.decode()] = client.hgetall(key)
        elif kind == "list":
            out[key.decode()] = client.lrange(key, 0, -1)
        elif kind == "string":
            out[key.decode()] = client.get(key)
        elif kind != "none":
            out[key.decode()] = kind
    return out


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def queue_is_drained(store: JobStore, task_ids: list[str]) -> bool:
    """No message of ``task_ids`` is queued or waiting for its acknowledgement."""
    pending = store.client.lrange(TEST_QUEUE, 0, -1) + store.client.hvals("unacked")
    return not any(t.encode() in raw for raw in pending for t in task_ids)


def assert_workers_healthy(app: Celery, nodes: list[WorkerNode]) -> None:
    assert all(node.proc.poll() is None for node in nodes), "a worker node exited"
    replies = app.control.ping(timeout=2.0) or []
    assert set(NODE_NAMES) <= {name for reply in replies for name in reply}, replies


def run_planned_job(app: Celery, store: JobStore, job: PlannedJob) -> None:
    """Send the job's own chord; it must finish ``succeeded``, each batch run once."""
    publish_chord(app, job.job_id, job.batches, TEST_QUEUE)
    status = wait_for_job(store, job.job_id, progress=False, timeout=60)
    assert status.state == SUCCEEDED, status
    assert (status.done, status.failed, status.committed_batches) == (job.total, 0, 2)
    attempts = store.client.hgetall(store.key(job.job_id, "attempts"))
    assert attempts == {b.key.encode(): b"1" for b in job.batches}, attempts
    assert sorted(store.commit_records(job.job_id)) == [b.key for b in job.batches]
    assert (job.out / "stats.json").is_file()
    assert len(list((job.out / "arrays").glob("*.npz"))) == job.total


def attack(app: Celery, store: JobStore, nodes: list[WorkerNode], job: PlannedJob,
           messages: list[tuple[str, Any, Any]]) -> str:
    """Send ``messages`` (name, args, kwargs); check each was dropped and changed nothing."""
    before = snapshot(store, job.job_id)
    since = log_sizes(nodes)
    task_ids = [send(app, name, args, kwargs) for name, args, kwargs in messages]
    text = wait_for_rejections(nodes, since, task_ids)
    assert_rejected_once_each(text, task_ids)
    assert snapshot(store, job.job_id) == before, "the job store changed"
    assert not job.out.exists(), files_under(job.out)
    assert queue_is_drained(store, task_ids), "a rejected message was not acknowledged"
    return text


# --------------------------------------------------------------------------- file names


def test_a_batch_key_that_is_a_path_writes_no_file(
    tmp_path: Path, app: Celery, store: JobStore, worker_nodes: list[WorkerNode],
    job: PlannedJob,
) -> None:
    """Batch keys that would name a file elsewhere (shards live in
    ``out/stats.json.shards/<job>/``, three levels under ``tmp_path``) are dropped."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # exists, so that a path into it would be written
    keys = [
        "../../../elsewhere/evil",                      # relative traversal
        str(elsewhere / "absolute"),                    # absolute path
        "b000000/../../../../elsewhere/inner",          # a planned key as a prefix
        "b000000\x00../../../elsewhere/nul",            # NUL byte
        "b" * 5000,                                     # longer than any file name
        "\u2025\u2215elsewhere\u2215unicode",           # two-dot leader, division slash
        "\uff0e\uff0e\uff0felsewhere",                  # fullwidth dots and solidus
        "b000000\u202e",                                # right-to-left override
        "b000000\n",                                    # a newline after a planned key
        ".hidden",
    ]
    messages = [(RUN_BATCH, (job.job_id, key, [0, 1, 2]), None) for key in keys]
    attack(app, store, worker_nodes, job, messages)
    assert files_under(elsewhere) == []
    assert [p.name for p in tmp_path.iterdir()] == ["elsewhere"]
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


def test_a_job_id_that_is_a_path_removes_and_writes_nothing(
    tmp_path: Path, app: Celery, store: JobStore, worker_nodes: list[WorkerNode],
    job: PlannedJob,
) -> None:
    """Gather removes ``<output>.shards/<job id>``: a job id naming another folder (or a key
    of another job's namespace) is dropped before any of that."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    ids = ["../../victim", str(victim), f"{job.job_id}:batches", f"{job.job_id}/../..", ""]
    messages = [(GATHER, ([], job_id), None) for job_id in ids]
    messages += [(RUN_BATCH, (job_id, "b000000", [0, 1, 2]), None) for job_id in ids]
    attack(app, store, worker_nodes, job, messages)
    assert (victim / "keep.txt").read_text() == "precious"
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


# --------------------------------------------------------------------------- the plan


def test_batches_the_job_never_planned_are_not_run(
    app: Celery, store: JobStore, worker_nodes: list[WorkerNode], job: PlannedJob,
) -> None:
    """Two crafted batches ``bogus-1`` with ``[0, 0, 0]`` once finished a job ``succeeded``
    whose own batches never ran; planned keys with other indices are no better."""
    messages = [
        (RUN_BATCH, (job.job_id, "bogus-1", [0, 0, 0]), None),
        (RUN_BATCH, (job.job_id, "bogus-2", [3, 4, 5]), None),
        (RUN_BATCH, (job.job_id, "b000000", [0, 0, 0]), None),      # planned key, not its indices
        (RUN_BATCH, (job.job_id, "b000000", [0, 1]), None),         # a part of them
        (RUN_BATCH, (job.job_id, "b000000", [2, 1, 0]), None),      # another order
        (RUN_BATCH, (job.job_id, "b000000", [0, 1, 2, 3]), None),   # more
        (RUN_BATCH, (job.job_id, "b000001", [0, 1, 2]), None),      # another batch's
        (RUN_BATCH, (job.job_id, "r1-b000000", [0, 1, 2]), None),   # a retry never planned
    ]
    attack(app, store, worker_nodes, job, messages)
    assert store.status(job.job_id).state == RUNNING
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


def test_a_message_for_a_job_that_does_not_exist_is_dropped(
    app: Celery, store: JobStore, worker_nodes: list[WorkerNode], job: PlannedJob,
) -> None:
    """No traceback, and no key created for the job that does not exist."""
    ghost = new_job_id()
    messages = [(RUN_BATCH, (ghost, "b000000", [0, 1, 2]), None), (GATHER, ([], ghost), None),
                (GATHER, (None, ghost), None)]
    attack(app, store, worker_nodes, job, messages)
    assert list(store.client.scan_iter(match=f"*{ghost}*")) == []
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


def test_malformed_arguments_are_dropped(
    app: Celery, store: JobStore, worker_nodes: list[WorkerNode], job: PlannedJob,
) -> None:
    """String, float, boolean or missing indices, wrong argument counts, keyword
    arguments: each one line, never a traceback."""
    jid = job.job_id
    messages: list[tuple[str, Any, Any]] = [
        (RUN_BATCH, (jid, "b000000", ["0", "1", "2"]), None),
        (RUN_BATCH, (jid, "b000000", [0.0, 1.0, 2.0]), None),
        (RUN_BATCH, (jid, "b000000", [False, True, 2]), None),
        (RUN_BATCH, (jid, "b000000", {"0": 0}), None),
        (RUN_BATCH, (jid, "b000000", None), None),
        (RUN_BATCH, (jid, "b000000", "0-2"), None),
        (RUN_BATCH, (jid, "b000000", []), None),
        (RUN_BATCH, (jid, "b000000"), None),
        (RUN_BATCH, (jid, "b000000", [0, 1, 2], "extra"), None),
        (RUN_BATCH, (), {"job_id": jid, "batch_key": "b000000", "indices": [0, 1, 2]}),
        (RUN_BATCH, (jid, "b000000", [0, 1, 2]), {"node": "x"}),
        (RUN_BATCH, (123, "b000000", [0, 1, 2]), None),
        (RUN_BATCH, (jid, ["b000000"], [0, 1, 2]), None),
        (GATHER, (jid,), None),
        (GATHER, ("b000000", jid), None),
        (GATHER, ([], jid, "extra"), None),
        (GATHER, ([], [jid]), None),
    ]
    attack(app, store, worker_nodes, job, messages)
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


def test_a_crafted_gather_does_not_finish_an_unfinished_job(
    app: Celery, store: JobStore, worker_nodes: list[WorkerNode], job: PlannedJob,
) -> None:
    """Gather of a job with a batch still to run leaves it running and merges nothing."""
    first = job.batches[0]
    send(app, RUN_BATCH, (job.job_id, first.key, first.indices))
    deadline = time.monotonic() + 30
    while store.status(job.job_id).committed_batches < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = snapshot(store, job.job_id)
    since = log_sizes(worker_nodes)
    task_id = send(app, GATHER, ([first.key, "b000001"], job.job_id))
    deadline = time.monotonic() + 30
    while f"{GATHER}[{task_id}]" not in logs_since(worker_nodes, since) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)
    text = logs_since(worker_nodes, since)
    assert "Traceback" not in text, text
    status = store.status(job.job_id)
    assert (status.state, status.committed_batches, status.done) == (RUNNING, 1, 3)
    assert snapshot(store, job.job_id) == before
    assert not (job.out / "stats.json").exists()
    assert_workers_healthy(app, worker_nodes)
    # the job's own chord: both batches sent again; the committed one is skipped
    run_planned_job(app, store, job)


# --------------------------------------------------------------------------- Celery's own


BUILTINS: list[tuple[str, Any, Any]] = [
    # re-queues itself every second while its group is not ready: forever
    ("celery.chord_unlock", ("no-such-group", {"task": GATHER, "args": [], "kwargs": {},
                                               "options": {}, "subtask_type": None}), None),
    ("celery.backend_cleanup", (), None),
    ("celery.accumulate", (1, 2), None),
    ("celery.map", ({"task": GATHER, "args": [], "kwargs": {}, "options": {}}, [[[], "x"]]),
     None),
    ("celery.starmap", ({"task": GATHER, "args": [], "kwargs": {}, "options": {}}, [[[], "x"]]),
     None),
    ("celery.chunks", ({"task": GATHER, "args": [], "kwargs": {}, "options": {}},
                       [[[], "x"]], 1), None),
    ("celery.group", ([{"task": GATHER, "args": [[], "x"], "kwargs": {}, "options": {}}],),
     None),
    ("celery.chain", (), {"tasks": [{"task": GATHER, "args": [[], "x"], "kwargs": {},
                                     "options": {}}]}),
    ("celery.chord", (), {"header": [], "body": {"task": GATHER, "args": [], "kwargs": {},
                                                 "options": {}}}),
    ("os.system", ("touch /tmp/curator-pwned",), None),
    ("curator.no_such_task", (), None),
]


def test_celery_builtin_and_unknown_tasks_are_not_run(
    app: Celery, store: JobStore, worker_nodes: list[WorkerNode], job: PlannedJob,
) -> None:
    """Each is dropped once with one line: an injected ``chord_unlock`` does not loop."""
    text = attack(app, store, worker_nodes, job, BUILTINS)
    for name, _, _ in BUILTINS:
        assert f"Task {name}[" not in text, f"{name} ran:\n{text[-3000:]}"
    assert "NotRegistered" not in text
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


# --------------------------------------------------------------------------- size


def test_an_oversized_message_is_dropped_unread(
    app: Celery, store: JobStore, worker_nodes: list[WorkerNode], job: PlannedJob,
) -> None:
    """A 20 MB message (a planned batch with 20 MB of padding in its key) is dropped with
    one line naming the limit; the workers go on."""
    padding = "b" * (20 * 2**20)
    messages = [(RUN_BATCH, (job.job_id, "b000000" + padding, [0, 1, 2]), None),
                (GATHER, ([padding], job.job_id), None)]
    text = attack(app, store, worker_nodes, job, messages)
    assert "CURATOR_MAX_MESSAGE_BYTES" in text
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


def test_a_compressed_message_is_dropped_undecoded(
    app: Celery, cluster_settings: Settings, store: JobStore, worker_nodes: list[WorkerNode],
    job: PlannedJob,
) -> None:
    """A 60 KB zlib body that inflates to 60 MB (a planned batch padded with spaces): our
    producers never compress, so it is dropped before it is decoded."""
    import zlib

    before = snapshot(store, job.job_id)
    since = log_sizes(worker_nodes)
    bomb = str(uuid.uuid4())
    body = b'[["' + job.job_id.encode() + b'", "b000000", [0, 1, 2]' + b" " * (60 * 2**20)
    body += b"], {}, {}]"
    with Connection(cluster_settings.broker_url) as conn:
        conn.Producer().publish(zlib.compress(body, 9), routing_key=TEST_QUEUE,
                                content_type="application/json", content_encoding="utf-8",
                                headers={"task": RUN_BATCH, "id": bomb, "lang": "py",
                                         "compression": "application/x-gzip"})
    text = wait_for_rejections(worker_nodes, since, [bomb])
    assert_rejected_once_each(text, [bomb])
    assert "compressed messages are not accepted" in text
    assert snapshot(store, job.job_id) == before
    assert queue_is_drained(store, [bomb])
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


# --------------------------------------------------------------------------- unreadable


def test_unreadable_messages_are_dropped_with_one_line(
    app: Celery, cluster_settings: Settings, store: JobStore, worker_nodes: list[WorkerNode],
    job: PlannedJob,
) -> None:
    """A body that is not JSON, and a message that names no task: one line each."""
    before = snapshot(store, job.job_id)
    since = log_sizes(worker_nodes)
    broken, nameless = str(uuid.uuid4()), str(uuid.uuid4())
    with Connection(cluster_settings.broker_url) as conn:
        producer = conn.Producer()
        truncated = b'[["' + job.job_id.encode() + b'", "b000000", [0, 1'
        producer.publish(truncated, routing_key=TEST_QUEUE, content_type="application/json",
                         content_encoding="utf-8",
                         headers={"task": RUN_BATCH, "id": broken, "lang": "py"})
        producer.publish({"args": [job.job_id, "b000000", [0, 1, 2]]}, routing_key=TEST_QUEUE,
                         serializer="json", headers={"id": nameless})
    text = wait_for_rejections(worker_nodes, since, [broken, nameless])
    assert_rejected_once_each(text, [broken, nameless])
    assert snapshot(store, job.job_id) == before
    assert queue_is_drained(store, [broken, nameless])
    assert_workers_healthy(app, worker_nodes)
    run_planned_job(app, store, job)


def test_only_the_planned_batches_with_their_exact_indices_pass(store: JobStore) -> None:
    job_id = new_job_id()
    store.create_job(job_id, {"version": 1}, {}, [("b000000", [0, 1, 2]), ("b000001", [3])],
                     total=4, queue="q")
    assert unplanned_batch(store, job_id, "b000000", [0, 1, 2]) is None
    assert unplanned_batch(store, job_id, "b000001", [3]) is None
    for indices in ([0, 1], [2, 1, 0], [0, 1, 2, 3], [0, 0, 0], ["0", "1", "2"],
                    [0.0, 1.0, 2.0], [False, True, 2], [[0], [1], [2]]):
        problem = unplanned_batch(store, job_id, "b000000", indices)
        assert problem is not None and "are not the ones job" in problem, (indices, problem)
    assert "planned no batch bogus-1" in (unplanned_batch(store, job_id, "bogus-1", [0, 0, 0])
                                          or "")
    assert "planned no batch r1-b000000" in (unplanned_batch(store, job_id, "r1-b000000", [3])
                                             or "")
    store.add_batches(job_id, [("r1-b000000", [3])])  # a retry round plans its batches
    assert unplanned_batch(store, job_id, "r1-b000000", [3]) is None
    assert unknown_job(store, job_id) is None

    ghost = new_job_id()
    assert "no job" in (unplanned_batch(store, ghost, "b000000", [0]) or "")
    assert "no job" in (unknown_job(store, ghost) or "")
    assert not store.client.exists(store.key(ghost)), "a lookup created the job"
