"""Bulk chord publishing (producer/publish.py) against a real Redis and real workers.

The header messages built from the template must be standard Celery messages: the stock
``celery worker`` nodes of tests/conftest.py run them, the chord fires ``gather`` exactly
once (also when a header is delivered twice), and a job's merged results are right.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import chord
from celery.utils.saferepr import saferepr

from curator_worker import run_pipeline
from curator_worker.compat.celery import header_argsrepr
from curator_worker.config import Settings
from curator_worker.contract.planning import Batch, plan_batches
from curator_worker.contract.spec import build_pipeline
from curator_worker.messaging import GATHER, RUN_BATCH, create_app
from curator_worker.store import SUCCEEDED, JobStore, new_job_id
from producer.publish import publish_chord
from producer.submit import submit_job
from producer.template_publisher import fast_uuids
from producer.wait import wait_for_job
from tests.support.cluster import WorkerNode
from tests.support.specs import stats_spec

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def sequential_stats(tmp: Path, spec: dict[str, Any]) -> bytes:
    """The FieldStats file of a sequential run of ``spec`` (outputs moved under ``tmp``)."""
    seq = json.loads(json.dumps(spec))
    seq["filters"][0]["params"]["output"] = str(tmp / "seq-stats.json")
    seq["sink"]["params"]["output_dir"] = str(tmp / "seq-out")
    run_pipeline(build_pipeline(seq), backend="sequential")
    return (tmp / "seq-stats.json").read_bytes()


def decode(raw: bytes) -> dict[str, Any]:
    """A queued kombu envelope with its body decoded."""
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def shape(message: dict[str, Any], queue: str) -> str:
    """``message`` with every uuid and the queue name replaced: its layout."""
    text = json.dumps(message, sort_keys=True).replace(json.dumps(queue), '"<queue>"')
    return UUID.sub("<uuid>", text)


def gather_runs(nodes: list[WorkerNode], body_id: str) -> int:
    """How many times the workers ran the chord callback ``body_id``."""
    pattern = f"Task {GATHER}[{body_id}] succeeded"
    return sum(node.log.read_text(errors="replace").count(pattern) for node in nodes)


def wait_for_gather(nodes: list[WorkerNode], body_id: str, timeout: float = 30.0) -> int:
    """Wait until the workers logged ``body_id`` (the state is set just before), then count."""
    deadline = time.monotonic() + timeout
    while gather_runs(nodes, body_id) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a second run, if there were one, would show up by now
    return gather_runs(nodes, body_id)


def write_job(store: JobStore, spec: dict[str, Any], batches: list[Batch], queue: str) -> str:
    """Write a job record the way submit_job does; return its id."""
    job_id = new_job_id()
    stored = {k: v for k, v in spec.items() if k != "metadata"}
    store.create_job(job_id, stored, {"batch_size": len(batches[0].indices)},
                     [(b.key, b.indices) for b in batches],
                     total=sum(len(b.indices) for b in batches), queue=queue)
    return job_id


@pytest.fixture()
def app(cluster_settings: Settings):
    """A producer app for the test cluster."""
    producer_app = create_app(cluster_settings)
    yield producer_app
    producer_app.close()


@pytest.fixture()
def broker(cluster_settings: Settings) -> redis.Redis:
    """A raw client of the test Redis (the broker)."""
    client = redis.Redis.from_url(cluster_settings.broker_url)
    yield client
    client.close()


def test_template_envelopes_have_the_layout_celery_publishes(app, broker):
    """Same headers, properties and body layout as Celery's own chord, ids aside."""
    job_id = "layout-job"
    batches = [Batch(f"b{i:06d}", [i, i + 10]) for i in range(4)]
    stock_q, ours_q = f"layout-stock-{uuid.uuid4().hex}", f"layout-ours-{uuid.uuid4().hex}"
    header = [app.signature(RUN_BATCH, args=(job_id, b.key, b.indices), queue=stock_q)
              for b in batches]
    chord(header, app.signature(GATHER, args=(job_id,), queue=stock_q)).apply_async()
    done = publish_chord(app, job_id, batches, ours_q, method="template")
    try:
        assert done.method == "template" and done.n_tasks == 4
        stock = [decode(m) for m in reversed(broker.lrange(stock_q, 0, -1))]
        ours = [decode(m) for m in reversed(broker.lrange(ours_q, 0, -1))]
        assert [shape(m, stock_q) for m in stock] == [shape(m, ours_q) for m in ours]
        ids = set()
        for index, (message, batch) in enumerate(zip(ours, batches)):
            headers, props = message["headers"], message["properties"]
            assert headers["task"] == RUN_BATCH
            assert message["body"][0] == [job_id, batch.key, batch.indices]
            assert headers["group"] == done.group_id and headers["group_index"] == index
            assert headers["id"] == headers["root_id"] == props["correlation_id"]
            assert props["delivery_info"] == {"exchange": "", "routing_key": ours_q}
            assert headers["argsrepr"] == saferepr(tuple(message["body"][0]), 1024)
            chord_body = message["body"][2]["chord"]
            assert chord_body["task"] == GATHER and chord_body["args"] == [job_id]
            assert chord_body["options"]["task_id"] == done.body_id
            assert chord_body["options"]["group_id"] == done.group_id
            ids |= {headers["id"], props["delivery_tag"]}
        assert len(ids) == 8, "every message has its own task id and delivery tag"
        size_key = f"celery-taskset-meta-{done.group_id}.s"
        assert broker.get(size_key) == b"4", "the chord size is set with the headers"
        assert broker.ttl(size_key) > 0
    finally:
        broker.delete(stock_q, ours_q)


@pytest.mark.usefixtures("worker_nodes")
def test_bulk_published_job_succeeds_and_gather_fires_once(tmp_path, app, store, worker_nodes,
                                                            cluster_settings):
    spec = stats_spec(tmp_path / "out", 120)
    batches = plan_batches([[i] for i in range(120)], 7)
    job_id = write_job(store, spec, batches, cluster_settings.queue)
    done = publish_chord(app, job_id, batches, cluster_settings.queue)
    assert done.method == "template" and done.n_tasks == len(batches) == 18
    status = wait_for_job(store, job_id, progress=False, timeout=120)
    assert status.state == SUCCEEDED, store.failures(job_id)
    assert (status.done, status.failed, status.committed_batches) == (120, 0, 18)
    assert (tmp_path / "out" / "stats.json").read_bytes() == sequential_stats(tmp_path, spec)
    assert wait_for_gather(worker_nodes, done.body_id) == 1


@pytest.mark.usefixtures("worker_nodes")
def test_per_index_job_of_500_tasks(tmp_path, store, cluster_settings):
    spec = stats_spec(tmp_path / "out", 500, size=4)
    job = submit_job(spec, cluster_settings, batch_size=1)
    assert job.n_batches == 500
    status = wait_for_job(store, job.job_id, progress=False, timeout=240)
    assert status.state == SUCCEEDED, store.failures(job.job_id)
    assert (status.done, status.failed, status.committed_batches) == (500, 0, 500)
    assert sorted(i for b in store.batches(job.job_id).values() for i in b) == list(range(500))
    assert len(list((tmp_path / "out" / "arrays").glob("*.npz"))) == 500
    assert (tmp_path / "out" / "stats.json").read_bytes() == sequential_stats(tmp_path, spec)


@pytest.mark.usefixtures("worker_nodes")
def test_duplicate_header_delivery_still_fires_gather_once(tmp_path, app, store, broker,
                                                           worker_nodes):
    """At-least-once delivery: a header message delivered twice is counted once."""
    queue = f"curator-test-hold-{uuid.uuid4().hex[:8]}"
    spec = stats_spec(tmp_path / "out", 40)
    batches = plan_batches([[i] for i in range(40)], 5)
    job_id = write_job(store, spec, batches, queue)
    done = publish_chord(app, job_id, batches, queue)  # nobody consumes this queue yet
    assert broker.llen(queue) == 8
    for position in (0, -1):  # the first and the last header, with fresh delivery tags
        duplicate = json.loads(broker.lindex(queue, position))
        duplicate["properties"]["delivery_tag"] = str(uuid.uuid4())
        broker.lpush(queue, json.dumps(duplicate))
    nodes = [node.name for node in worker_nodes]  # not other tests' workers on this broker
    app.control.add_consumer(queue, reply=True, timeout=5, destination=nodes)
    try:
        status = wait_for_job(store, job_id, progress=False, timeout=120)
        assert status.state == SUCCEEDED, store.failures(job_id)
        assert (status.done, status.failed, status.committed_batches) == (40, 0, 8)
        assert (tmp_path / "out" / "stats.json").read_bytes() == sequential_stats(tmp_path, spec)
        assert wait_for_gather(worker_nodes, done.body_id) == 1
        deadline = time.monotonic() + 30
        while broker.llen(queue) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.llen(queue) == 0, "the duplicates were consumed too"
    finally:
        app.control.cancel_consumer(queue, reply=True, timeout=5, destination=nodes)
        broker.delete(queue)


@pytest.mark.usefixtures("worker_nodes")
def test_batch_method_fallback_runs_the_chord(tmp_path, app, store, worker_nodes,
                                              cluster_settings):
    spec = stats_spec(tmp_path / "out", 30)
    batches = plan_batches([[i] for i in range(30)], 4)
    job_id = write_job(store, spec, batches, cluster_settings.queue)
    done = publish_chord(app, job_id, batches, cluster_settings.queue, method="batch")
    assert done.method == "batch"
    status = wait_for_job(store, job_id, progress=False, timeout=120)
    assert status.state == SUCCEEDED and status.done == 30
    assert (tmp_path / "out" / "stats.json").read_bytes() == sequential_stats(tmp_path, spec)
    assert wait_for_gather(worker_nodes, done.body_id) == 1


def test_argsrepr_matches_celery_saferepr():
    rng = random.Random(5)
    for _ in range(3000):
        n = rng.choice([0, 1, 2, 50, 340, 341, 342, 1000, rng.randint(0, 1500)])
        base = rng.choice([0, 9, 99_999, 10**9, -10**6])
        indices = [base + rng.randint(0, 10 ** rng.randint(0, 6)) for _ in range(n)]
        if indices and rng.random() < 0.05:  # not an int: saferepr's own rendering
            indices[rng.randrange(len(indices))] = rng.choice([True, 1.5, "7"])
        args = (f"2026-{'x' * rng.randint(0, 40)}", f"b{rng.randint(0, 999_999):06d}", indices)
        maxlen = rng.choice([1024, rng.randint(30, 300), rng.randint(48, 64)])
        assert header_argsrepr(args, maxlen) == saferepr(args, maxlen, maxlevels=3)
    odd = ("job with 'quotes'", "b1", [1, 2])
    assert header_argsrepr(odd, 1024) == saferepr(odd, 1024, maxlevels=3)


def test_fast_uuids_are_distinct_version_4_uuids():
    ids = fast_uuids(2000)
    assert len(set(ids)) == 2000
    assert all(UUID.fullmatch(i) and str(uuid.UUID(i)) == i for i in ids)


def test_bad_arguments_are_refused(app):
    with pytest.raises(ValueError, match="method"):
        publish_chord(app, "j", [Batch("b0", [0])], "q", method="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        publish_chord(app, "j", [Batch("b0", [0])], "q", chunk_size=0)
