"""Configuration and spec input checks that need no server: URLs, secrets, variables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from curator_worker.config import (
    Settings,
    allowed_module_prefixes,
    check_environment,
    redact_text,
    redact_url,
)
from curator_worker.contract.spec import _module_allowed, build_pipeline, read_spec_file
from curator_worker.errors import ConfigurationError, SpecError
from tests.support.specs import stats_spec

SECRET = "Zq9-s3cr3t"


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET}@host:6379/0",
    f"redis://alice:{SECRET}@host:6379/0",
    f"redis://:{SECRET}#frag@host:6379/0",
    f"redis://:{SECRET}/path@host:6379/0",
    f"redis://:a?{SECRET}@host:6379/0",
    f"redis://:{SECRET}@x@host:6379/0",
    f"redis://:{SECRET}%zz@host:6379/0",
    f"redis://:pa ss {SECRET}@host:6379/0",
    f"redis://:[{SECRET}@host:6379/0",
    f"redis://:{SECRET}@[::1:6379/0",
    f"redis://{SECRET}@host/0",
    f"redis://host:6379/0?password={SECRET}",
    f"amqp://guest:{SECRET}@rabbit//",
])
def test_every_password_is_redacted_however_malformed(url: str) -> None:
    shown = redact_url(url)
    assert SECRET not in shown, shown
    assert "***" in shown
    in_text = redact_text(f"Error connecting to {url}: refused")
    assert SECRET not in in_text, in_text


def test_redaction_keeps_the_user_and_the_host() -> None:
    assert redact_url("redis://alice:p#w/x@host:6379/0") == "redis://alice:***@host:6379/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    assert redact_url(None) == "<none>"


def test_configured_passwords_are_scrubbed_from_any_text() -> None:
    """A misparsed URL may end up in a message in pieces no pattern finds: by value then."""
    Settings(broker_url=f"redis://:{SECRET}x1@host:6379/0")
    assert redact_text(f"connecting to {SECRET}x1:6379 failed") == "connecting to ***:6379 failed"


@pytest.mark.parametrize("url, expect", [
    ("redis://", "names no host"),
    ("redis:///0", "names no host"),
    (f"redis://:{SECRET}@/0", "names no host"),
    (f"redis://:{SECRET}@:6379/0", "names no host"),
    ("rediss://", "names no host"),
    ("amqp://", "names no host"),
    (f"redis://:{SECRET}#x@host/0", "percent-encoded"),
    ("redis://[::1/0", "cannot be parsed"),
    ("redis://host:70000/0", "cannot be parsed"),
    ("redis+socket://", "names no socket file"),
    (SECRET, "not a URL"),
])
def test_a_url_without_a_reachable_host_is_an_error(url: str, expect: str) -> None:
    with pytest.raises(ConfigurationError, match=expect) as info:
        Settings(broker_url=url)
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError, match=expect):
        Settings.from_env({"CURATOR_BROKER_URL": "redis://h/0", "CURATOR_RESULT_BACKEND": url})


@pytest.mark.parametrize("url", [
    "redis://localhost:6379/0", "redis://:pw@127.0.0.1:6379/0", "rediss://h.example:6380/1",
    "redis+socket:///tmp/redis.sock", "unix:///tmp/redis.sock?db=1",
    "redis://:p%23w%2F@h:6379/0", "amqp://guest:guest@rabbit:5672//", "redis://[::1]:6379/0",
    "memory://", "rpc://",
])
def test_good_urls_are_accepted(url: str) -> None:
    assert Settings(broker_url=url).broker_url == url
    assert Settings(broker_url="redis://h/0", result_backend=url).result_backend == url


@pytest.mark.parametrize("name, value", [
    (n, v) for n in ("CURATOR_VISIBILITY_TIMEOUT", "CURATOR_JOB_TTL")
    for v in ("abc", "-1", "0", "nan", "inf", "-inf", "1e99", "3.5", "1_000", "٣", "9" * 40)
] + [("CURATOR_TASK_EVENTS", v) for v in ("maybe", "2", "nan", "-1")] + [
    ("CURATOR_QUEUE", " "), ("CURATOR_QUEUE", "q\n"), ("CURATOR_QUEUE", "x" * 201),
    ("CURATOR_ALLOWED_MODULES", "a b"), ("CURATOR_ALLOWED_MODULES", "../x"),
    ("CURATOR_ALLOWED_MODULES", ","),
] + [("CURATOR_MAX_MESSAGE_BYTES", v) for v in ("16MB", "0", "-5", "1e6", "٣", "9" * 40)])
def test_every_bad_variable_is_a_configuration_error(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name) as info:
        check_environment({name: value})
    assert "\n" not in str(info.value)


def test_good_variables_are_read() -> None:
    settings = check_environment({"CURATOR_VISIBILITY_TIMEOUT": " 60 ", "CURATOR_JOB_TTL": "5",
                                  "CURATOR_TASK_EVENTS": "off", "CURATOR_QUEUE": "a:b/c.é",
                                  "CURATOR_ALLOWED_MODULES": "mypipe., acme.x",
                                  "CURATOR_MAX_MESSAGE_BYTES": " 1048576 "})
    assert (settings.visibility_timeout, settings.job_ttl, settings.task_events) == (60, 5, False)
    assert settings.queue == "a:b/c.é"


def test_a_prefix_with_a_trailing_dot_allows_the_top_level_module() -> None:
    """The README's ``yourpkg.`` form: ``mypipe.`` allows ``mypipe`` and ``mypipe.x``."""
    prefixes = allowed_module_prefixes({"CURATOR_ALLOWED_MODULES": "mypipe."})
    assert _module_allowed("mypipe", prefixes)
    assert _module_allowed("mypipe.sources", prefixes)
    assert not _module_allowed("mypipeline", prefixes)
    assert not _module_allowed("other", prefixes)


@pytest.mark.parametrize("params, expect", [
    ({"count": float("nan")}, "holds nan"),
    ({"count": 1e19}, "must be int"),
    ({"count": 10**30}, "beyond 64 bits"),
    ({"work_ms": float("nan")}, "holds nan"),
    ({"work_ms": "inf"}, "holds inf"),
    ({"work_ms": 10**400}, "beyond 64 bits"),
])
def test_non_finite_and_huge_params_are_refused(params: dict, expect: str,
                                                tmp_path: Path) -> None:
    spec = stats_spec(tmp_path, 4)
    spec["source"]["params"].update(params)
    with pytest.raises(SpecError, match=expect):
        build_pipeline(spec, "job.yaml")


def test_finite_float_params_still_work(tmp_path: Path) -> None:
    spec = stats_spec(tmp_path, 4)
    spec["source"]["params"].update(work_ms=0.5, count=4.0)
    pipeline = build_pipeline(spec, "job.yaml")
    assert len(pipeline) == 4 and math.isclose(pipeline.source.work_ms, 0.5)


def test_a_spec_file_that_is_a_directory_or_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="a directory, not a regular file"):
        read_spec_file(tmp_path)
    with pytest.raises(SpecError, match="a device, not a regular file"):
        read_spec_file("/dev/null")


def test_a_spec_dict_nested_too_deeply_is_a_spec_error(tmp_path: Path) -> None:
    """The Python API (``submit_job(spec_dict)``) gets the same limits as spec files."""
    spec = stats_spec(tmp_path, 4)
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    spec["source"]["params"]["fields"] = deep
    with pytest.raises(SpecError, match="nested deeper than 64"):
        build_pipeline(spec, "api")
