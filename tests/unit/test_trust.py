"""Message checks (curator_worker/trust.py) and safe shard names (curator_worker/batch.py).

The attacks themselves, against real workers, are in tests/integration/test_message_trust.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from curator_worker.batch import execute_batch
from curator_worker.config import Settings
from curator_worker.contract.spec import build_pipeline
from curator_worker.messaging import GATHER, RUN_BATCH, create_app
from curator_worker.shards import is_safe_name, shard_dir, write_filter_shards
from curator_worker.store import new_job_id
from curator_worker.trust import (
    CHORD_UNLOCK,
    DEFAULT_MAX_MESSAGE_BYTES,
    accepted_tasks,
    max_message_bytes,
    message_problem,
)
from producer.publish import frozen_body
from tests.support.specs import stats_spec

#: Keys that would put a file somewhere else, or under a name a reader misreads.
CRAFTED_NAMES = [
    "../x", "../../../../../../tmp/evil", "/tmp/evil", "b000000/../../x", "b0\x00../x",
    "b" * 201, "\u2025\u2215x", "\uff0e\uff0e\uff0fx", "b000000\u202e", "b000000\n", ".hidden",
    "..", ".", "", "a b", "a\\b", "C:evil", "b000000:x", "b\u0301", "\u0430dmin",
]


@pytest.fixture(scope="module")
def app() -> Celery:
    producer = create_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    yield producer
    producer.close()


def celery_message(app: Celery, name: str, args: tuple[Any, ...], **options: Any
                   ) -> tuple[Any, dict[str, Any]]:
    """The body and headers Celery itself builds for a task message."""
    message = app.amqp.as_task_v2(str(uuid.uuid4()), name, args=args, **options)
    return json.loads(json.dumps(message.body)), message.headers


def test_the_messages_our_producers_send_pass(app: Celery) -> None:
    body = frozen_body(app, "20261130-120000-abcdef12", "q", str(uuid.uuid4()),
                       str(uuid.uuid4()))
    header, headers = celery_message(app, RUN_BATCH, ("20261130-120000-abcdef12", "r2-b000003",
                                                      [4, 5, 6]), chord=dict(body))
    assert message_problem(RUN_BATCH, header, headers) is None
    for batch_keys in (None, [], ["b000000", "b000001"]):
        gather, headers = celery_message(app, GATHER, (batch_keys, "20261130-120000-abcdef12"))
        assert message_problem(GATHER, gather, headers) is None
    retried, headers = celery_message(app, GATHER, ([], "job-1"), countdown=600)
    assert message_problem(GATHER, retried, headers) is None


@pytest.mark.parametrize(("name", "args", "options", "expected"), [
    (RUN_BATCH, ("job", "b0", [0]), {"kwargs": {"x": 1}}, "keyword arguments"),
    (RUN_BATCH, ("job", "b0"), {}, "got 2 arguments"),
    (RUN_BATCH, ("job", "b0", [0], 1), {}, "got 4 arguments"),
    (RUN_BATCH, ("job", "b0", "0-2"), {}, "indices must be a non-empty list"),
    (RUN_BATCH, ("job", "b0", []), {}, "indices must be a non-empty list"),
    (RUN_BATCH, ("job", "b0", {"0": 0}), {}, "indices must be a non-empty list"),
    (RUN_BATCH, (7, "b0", [0]), {}, "job id 7"),
    (RUN_BATCH, ("job", ["b0"], [0]), {}, "batch key ['b0']"),
    (RUN_BATCH, ("job", "../b0", [0]), {}, "batch key '../b0'"),
    (RUN_BATCH, ("job", "b0", [0]), {"countdown": 5}, "eta"),
    (RUN_BATCH, ("job", "b0", [0]), {"callbacks": [{"task": GATHER}]}, "callbacks"),
    (RUN_BATCH, ("job", "b0", [0]), {"errbacks": [{"task": GATHER}]}, "errbacks"),
    (RUN_BATCH, ("job", "b0", [0]), {"chain": [{"task": RUN_BATCH}]}, "chain"),
    (RUN_BATCH, ("job", "b0", [0]), {"chord": {"task": "celery.chord_unlock"}}, "chord"),
    (GATHER, ([], "job"), {"chord": {"task": GATHER}}, "chord"),
    (GATHER, ("job",), {}, "got 1 arguments"),
    (GATHER, ("b0", "job"), {}, "batch keys must be a list of strings"),
    (GATHER, ([1], "job"), {}, "batch keys must be a list of strings"),
    (GATHER, ([], "../../victim"), {}, "job id '../../victim'"),
    (GATHER, ([], "job"), {"countdown": 10 * 24 * 3600}, "too far ahead"),
])
def test_every_other_shape_is_refused_with_one_line(
    app: Celery, name: str, args: tuple[Any, ...], options: dict[str, Any], expected: str,
) -> None:
    body, headers = celery_message(app, name, args, **options)
    problem = message_problem(name, body, headers)
    assert problem is not None and expected in problem, problem
    assert "\n" not in problem and problem.isascii()


@pytest.mark.parametrize("body", [None, "x", [], [[], {}], {"args": []}, [{}, {}, {}],
                                  [[], [], {}], [[], {}, "embed"]])
def test_a_body_that_is_not_a_protocol_2_body_is_refused(body: Any) -> None:
    assert message_problem(RUN_BATCH, body, {}) is not None


def test_crafted_values_are_shown_in_ascii_on_one_line(app: Celery) -> None:
    body, headers = celery_message(app, RUN_BATCH, ("job", "b0\n\u202eevil" + "x" * 500, [0]))
    problem = message_problem(RUN_BATCH, body, headers)
    assert problem is not None and problem.isascii() and "\n" not in problem
    assert len(problem) < 200


def test_a_batch_of_a_million_indices_is_well_under_the_message_cap(app: Celery) -> None:
    """The largest batch a 1,000,000-index job can have travels in one message."""
    body, headers = celery_message(app, RUN_BATCH, (new_job_id(), "b000000",
                                                    list(range(1_000_000))))
    size = len(json.dumps(body).encode()) + sum(len(str(v)) for v in headers.values())
    assert size * 1.5 < DEFAULT_MAX_MESSAGE_BYTES


def test_the_message_cap_is_configurable(caplog: pytest.LogCaptureFixture) -> None:
    assert max_message_bytes({}) == DEFAULT_MAX_MESSAGE_BYTES
    assert max_message_bytes({"CURATOR_MAX_MESSAGE_BYTES": "1048576"}) == 2**20
    for bad in ("abc", "-1", "0", "1e9", "\u0661\u0662"):
        caplog.clear()
        assert max_message_bytes({"CURATOR_MAX_MESSAGE_BYTES": bad}) == DEFAULT_MAX_MESSAGE_BYTES
        assert len(caplog.records) == 1 and "CURATOR_MAX_MESSAGE_BYTES" in caplog.text


def test_workers_run_our_tasks_and_chord_unlock_only_where_chords_need_it(app: Celery) -> None:
    """Celery's Redis result backend joins chords itself: no built-in task is needed."""
    assert app.backend.supports_native_join
    assert accepted_tasks(app) == {RUN_BATCH, GATHER}
    polling = SimpleNamespace(backend=SimpleNamespace(supports_native_join=False))
    assert accepted_tasks(polling) == {RUN_BATCH, GATHER, CHORD_UNLOCK}


# --------------------------------------------------------------------------- the plan


# --------------------------------------------------------------------------- file names


@pytest.mark.parametrize("name", CRAFTED_NAMES)
def test_crafted_names_are_not_safe(name: str) -> None:
    assert not is_safe_name(name)


def test_no_crafted_key_or_run_id_places_a_file_anywhere(tmp_path: Path) -> None:
    """Shards go to ``<output>.shards/<run id>/<key>.<token>.shard`` only: a key or run id
    that is not a safe name is refused before any file or folder is made."""
    out = tmp_path / "a" / "b" / "out"
    pipeline = build_pipeline(stats_spec(out, 4))
    outcome = execute_batch(pipeline, [0, 1])
    before = sorted(tmp_path.rglob("*"))
    for crafted in CRAFTED_NAMES + [str(tmp_path / "abs"), None, 5]:
        with pytest.raises(ValueError, match="Refusing"):
            write_filter_shards(pipeline, outcome.filters, outcome.stateful_positions, "run-1",
                                crafted)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="Refusing"):
            write_filter_shards(pipeline, outcome.filters, outcome.stateful_positions, crafted,  # type: ignore[arg-type]
                                "b000000")
        with pytest.raises(ValueError, match="Refusing"):
            shard_dir(str(out / "stats.json"), crafted)  # type: ignore[arg-type]
    assert sorted(tmp_path.rglob("*")) == before

    shards = write_filter_shards(pipeline, outcome.filters, outcome.stateful_positions,
                                 "20261130-120000-abcdef12", "r1-b000000")
    (shard,) = shards.values()
    assert Path(shard).parent == out / "stats.json.shards" / "20261130-120000-abcdef12"
    assert Path(shard).name.startswith("r1-b000000.") and Path(shard).is_file()
