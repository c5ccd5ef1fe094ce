"""Task events (what Flower shows) follow CURATOR_TASK_EVENTS; private clusters send none."""

from __future__ import annotations

import pytest

from curator_worker.config import Settings, celery_config
from curator_worker.embedded import LocalCluster, worker_command
from curator_worker.errors import ConfigurationError

BROKER = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(("raw", "expected"), [("", True), ("1", True), ("on", True),
                                               ("0", False), ("false", False), ("No", False)])
def test_the_variable_turns_worker_and_sent_events_on_and_off(raw: str, expected: bool) -> None:
    settings = Settings.from_env({"CURATOR_BROKER_URL": BROKER, "CURATOR_TASK_EVENTS": raw})
    assert settings.task_events is expected
    config = celery_config(settings)
    assert config["worker_send_task_events"] is expected
    assert config["task_send_sent_event"] is expected
    assert ("CURATOR_TASK_EVENTS" in settings.environ()) is (not expected)
    assert Settings.from_env(settings.environ()).task_events is expected


def test_a_bad_value_is_a_one_line_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="CURATOR_TASK_EVENTS='maybe': use 1 or 0"):
        Settings.from_env({"CURATOR_TASK_EVENTS": "maybe"})


def test_the_embedded_cluster_runs_without_events() -> None:
    cluster = LocalCluster(workers=1)
    try:
        assert cluster.settings.task_events is False
        assert cluster.settings.environ()["CURATOR_TASK_EVENTS"] == "0"
    finally:
        cluster.stop()
    assert "--task-events" in worker_command(1, "a@b", "q")
    assert "--task-events" not in worker_command(1, "a@b", "q", task_events=False)
