"""Bad input to the real ``curator-submit``: exit 2, one line on stderr, nothing enqueued.

Every case runs the installed command against the test session's Redis with a queue of
its own (``--queue``), and checks: exit code 2, exactly one line on stderr saying what is
wrong (never a traceback), nothing on stdout, no message on that queue and no job created
(the ``curator:jobs`` sorted set is unchanged). No worker is needed.

The second half runs bad environment values and URLs against every command
(``curator-submit``, ``curator-jobs``, ``curator-worker``), and bad spec files, params and
numeric options, against a Redis of this module's own whose DBSIZE must not change.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from curator_worker.embedded import RedisServer, free_port
from curator_worker.store import JobStore
from curator_worker.store.keys import JOBS_INDEX
from tests.support.cluster import REPO, private_redis
from tests.support.specs import stats_spec

BIN = Path(sys.executable).parent
BAD = "tests.support.bad_components"
COUNT = 20


def run_submit(args: list[str], env: dict[str, str], extra_path: str = "",
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``curator-submit ARGS`` with ``env`` (and ``extra_path`` on PYTHONPATH)."""
    path = os.pathsep.join(p for p in (str(REPO), extra_path) if p)
    full = {**os.environ, **env, "PYTHONPATH": path}
    return subprocess.run([str(BIN / "curator-submit"), *args], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One bad input: how to write it, the extra arguments, what stderr must say."""

    expect: str
    text: Callable[[Path], str] | None = None
    suffix: str = ".yaml"
    args: tuple[str, ...] = ()
    names_file: bool = False
    module_dir: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def good(out: Path) -> dict[str, Any]:
    """A valid spec of :data:`COUNT` indices writing under ``out``."""
    return stats_spec(out, COUNT)


def spec_text(mutate: Callable[[dict[str, Any]], object]) -> Callable[[Path], str]:
    """The YAML of the good spec after ``mutate(spec)`` changed it in place."""
    def make(out: Path) -> str:
        spec = good(out)
        mutate(spec)
        return yaml.safe_dump(spec, sort_keys=False)
    return make


def raw(text: str) -> Callable[[Path], str]:
    """A spec file whose content is ``text`` as is."""
    return lambda out: text


def source(**changes: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the source entry (``None`` deletes a key)."""
    def mutate(spec: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is None:
                del spec["source"][key]
            else:
                spec["source"][key] = value
    return mutate


def param(**changes: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the source's params (``None`` deletes a param)."""
    def mutate(spec: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is None:
                del spec["source"]["params"][key]
            else:
                spec["source"]["params"][key] = value
    return mutate


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of one top-level key (``...`` deletes it)."""
    def mutate(spec: dict[str, Any]) -> None:
        if value is ...:
            del spec[key]
        else:
            spec[key] = value
    return mutate


def both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """Several mutations in order."""
    def mutate(spec: dict[str, Any]) -> None:
        for m in mutations:
            m(spec)
    return mutate


def sink(name: str, module: str) -> Callable[[dict[str, Any]], None]:
    """Replace the sink's class, keeping its params."""
    def mutate(spec: dict[str, Any]) -> None:
        spec["sink"].update(name=name, module=module)
    return mutate


FIELDSTATS_AS_SOURCE = source(name="FieldStats", module="curator_worker.components.filters",
                              params={"output": "x.json"})

CASES: dict[str, Case] = {
    # the spec file itself
    "missing-spec-file": Case("spec file not found", names_file=True),
    "spec-is-a-list": Case("must be a mapping", raw("- source\n- sink\n"), names_file=True),
    "spec-is-a-number": Case("must be a mapping", raw("42\n"), names_file=True),
    "spec-is-empty": Case("must be a mapping", raw(""), names_file=True),
    "yaml-syntax-error": Case("YAML syntax error", raw("source: {name: [oops\n"),
                              names_file=True),
    "json-syntax-error": Case("JSON syntax error", raw('{"version": 1,}'), suffix=".json",
                              names_file=True),
    # the spec's layout
    "unknown-top-level-key": Case("unknown top-level key(s) sources",
                                  spec_text(set_key("sources", {})), names_file=True),
    "unsupported-version": Case("version 2 is not supported", spec_text(set_key("version", 2)),
                                names_file=True),
    "no-source": Case("no 'source'", spec_text(set_key("source", ...)), names_file=True),
    "no-sink": Case("no 'sink'", spec_text(set_key("sink", ...)), names_file=True),
    "null-sink": Case("no 'sink'", spec_text(set_key("sink", None)), names_file=True),
    "filters-not-a-list": Case("'filters' must be a list",
                               spec_text(set_key("filters", {"name": "FieldStats"})),
                               names_file=True),
    # one component entry
    "component-not-a-mapping": Case("must be a mapping with 'name'",
                                    spec_text(set_key("source", "SyntheticArrays")),
                                    names_file=True),
    "component-unknown-key": Case("unknown key(s) kwargs", spec_text(source(kwargs={})),
                                  names_file=True),
    "component-without-name": Case("'name' is missing", spec_text(source(name=None)),
                                   names_file=True),
    "component-without-module": Case("'module' is missing", spec_text(source(module=None)),
                                     names_file=True),
    "module-not-installed": Case("cannot import module 'no_such_package.sources'",
                                 spec_text(source(module="no_such_package.sources")),
                                 names_file=True),
    "module-raises-on-import": Case(
        "importing module 'exploding_components' failed: RuntimeError",
        spec_text(source(module="exploding_components")), names_file=True, module_dir=True),
    "class-not-in-module": Case("Did you mean 'SyntheticArrays'",
                                spec_text(source(name="SyntheticArray")), names_file=True),
    "filter-used-as-source": Case("is a filter, but a source is needed",
                                  spec_text(FIELDSTATS_AS_SOURCE), names_file=True),
    "abstract-component": Case("'HalfWrittenSource' is abstract",
                               spec_text(source(name="HalfWrittenSource", module=BAD,
                                                params={})), names_file=True),
    "not-a-component": Case("not a pipeline component",
                            spec_text(source(name="NotAComponent", module=BAD, params={})),
                            names_file=True),
    # params
    "params-not-a-mapping": Case("'params' must be a mapping", spec_text(source(params=[1, 2])),
                                 names_file=True),
    "param-typo": Case("unknown param 'cout'. Did you mean 'count'?",
                       spec_text(both(param(count=None), param(cout=5))), names_file=True),
    "param-missing": Case("missing required param 'count'", spec_text(param(count=None)),
                          names_file=True),
    "param-wrong-type": Case("param 'count' must be int, got 'ten'",
                             spec_text(param(count="ten")), names_file=True),
    "param-rejected-by-component": Case("building it failed: ValueError",
                                        spec_text(param(count=-1)), names_file=True),
    "pipeline-with-no-indices": Case("No indices to run", spec_text(param(count=0))),
    # index selections
    "indices-reversed-range": Case("the end is before the start", args=("--indices", "5-2")),
    "indices-not-a-number": Case("Bad index 'x'", args=("--indices", "x")),
    "indices-negative": Case("Bad index '-1'", args=("--indices", "-1")),
    "indices-out-of-range": Case("Index 20 is out of range", args=("--indices", "0-20")),
    "indices-huge-range": Case("out of range", args=("--indices", "0-99999999999999")),
    "indices-duplicate": Case("Index 3 is selected twice", args=("--indices", "3,3")),
    "indices-overlapping-ranges": Case("selected twice", args=("--indices", "0-5,4-6")),
    "indices-empty": Case("Empty index list", args=("--indices", "")),
    "indices-blank": Case("Empty index list", args=("--indices", "   ")),
    "indices-empty-item": Case("Empty item", args=("--indices", "1,,2")),
    # options
    "batch-size-zero": Case("--batch-size must be a positive integer", args=("--batch-size", "0")),
    "batch-size-negative": Case("--batch-size must be a positive integer, got -3",
                                args=("--batch-size", "-3")),
    "index-timeout-zero": Case("--index-timeout must be a positive", args=("--index-timeout", "0")),
    "memory-limit-negative": Case("--index-memory-limit must be a positive",
                                  args=("--index-memory-limit", "-5")),
    "retries-negative": Case("--retries must be 0 or more", args=("--retries", "-1")),
    "max-attempts-zero": Case("--max-attempts must be at least 1", args=("--max-attempts", "0")),
    # partitions that cannot be satisfied
    "partition-groups-overlap": Case(
        "puts index 1 in two groups",
        spec_text(source(name="OverlappingGroupsArrays", module=BAD))),
    "partitions-demand-opposite-orders": Case(
        "require opposite orders",
        spec_text(both(source(name="PairedArrays", module=BAD),
                       sink("ReversedPairsNpz", BAD)))),
    "partition-names-index-outside-run": Case(
        f"names index {COUNT - 1}, which is not in this run",
        spec_text(source(name="ForeignIndexArrays", module=BAD)), args=("--indices", "0-4")),
}

EXPLODING_MODULE = "raise RuntimeError('this module cannot be imported')\n"


@pytest.fixture()
def jobs_before(store: JobStore) -> int:
    """Jobs in the job store before the command runs."""
    return int(store.client.zcard(JOBS_INDEX))


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_is_refused_before_anything_is_enqueued(
    case_id: str, tmp_path: Path, cluster_env: dict[str, str], store: JobStore,
    jobs_before: int,
) -> None:
    case = CASES[case_id]
    spec_path = tmp_path / f"job-{case_id}{case.suffix}"
    if case.text is not None:
        spec_path.write_text(case.text(tmp_path / "out"))
    elif case_id != "missing-spec-file":
        spec_path.write_text(yaml.safe_dump(good(tmp_path / "out"), sort_keys=False))
    if case.module_dir:
        (tmp_path / "exploding_components.py").write_text(EXPLODING_MODULE)
    queue = f"curator-bad-input-{case_id}"

    done = run_submit([str(spec_path), "--queue", queue, *case.args], cluster_env,
                      extra_path=str(tmp_path) if case.module_dir else "")

    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{done.stderr}"
    assert case.expect.lower() in lines[0].lower(), lines[0]
    if case.names_file:
        assert spec_path.name in lines[0], lines[0]
    assert done.stdout == "", "no job id may be printed"
    assert store.client.llen(queue) == 0, "a message reached the broker"
    assert store.client.zcard(JOBS_INDEX) == jobs_before, "a job was created"
    assert not (tmp_path / "out").exists(), "nothing may be written"


@pytest.mark.parametrize("args, expect", [
    pytest.param(["--batch-size", "abc"], "'abc' is not a valid integer", id="batch-size-abc"),
    pytest.param(["--indices"], "requires an argument", id="option-without-value"),
    pytest.param(["--no-such-option"], "No such option", id="unknown-option"),
    pytest.param([], "is a directory", id="spec-is-a-directory"),
])
def test_usage_errors_exit_2_without_traceback(
    args: list[str], expect: str, tmp_path: Path, cluster_env: dict[str, str],
    store: JobStore, jobs_before: int,
) -> None:
    """Command-line usage errors (click's own format: usage, hint, then the error line)."""
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(good(tmp_path / "out")))
    target = str(tmp_path) if expect == "is a directory" else str(spec_path)
    queue = "curator-bad-input-usage"
    done = run_submit([target, "--queue", queue, *args], cluster_env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert expect in done.stderr.strip().splitlines()[-1]
    assert store.client.llen(queue) == 0
    assert store.client.zcard(JOBS_INDEX) == jobs_before


def test_a_queue_name_with_odd_characters_is_fine(tmp_path: Path, cluster_env: dict[str, str],
                                                  store: JobStore) -> None:
    """Control: the same command with a good spec does enqueue (the checks above can fail)."""
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(good(tmp_path / "out")))
    queue = "curator-bad-input:odd/chars.é"
    try:
        done = run_submit([str(spec_path), "--queue", queue, "--batch-size", "5", "--json"],
                          cluster_env)
        assert done.returncode == 0, done.stderr
        job_id = json.loads(done.stdout)["job_id"]
        assert store.status(job_id).queue == queue
        assert store.client.llen(queue) == 4
        assert store.client.zscore(JOBS_INDEX, job_id) is not None
        store.cancel(job_id)
    finally:
        store.client.delete(queue)


# --------------------------------------------------------------------------- the broker


@pytest.mark.parametrize("how", ["env", "flag"])
def test_unreachable_broker_is_a_quick_clear_error(how: str, tmp_path: Path) -> None:
    """Nothing listens on the port: exit 2 within 5 s, URL named, password redacted."""
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(good(tmp_path / "out")))
    port = free_port()
    url = f"redis://alice:hunter2-secret@127.0.0.1:{port}/0"
    env, args = ({"CURATOR_BROKER_URL": url}, []) if how == "env" else ({}, ["--broker", url])
    env = {**env, "CURATOR_QUEUE": "curator-bad-input-broker"}
    started = time.monotonic()
    done = run_submit([str(spec_path), *args], env)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert elapsed <= 5.0, f"took {elapsed:.1f}s"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"redis://alice:***@127.0.0.1:{port}/0" in lines[0]
    assert "hunter2" not in done.stderr + done.stdout


def test_broker_that_accepts_but_never_answers_fails_within_5s(tmp_path: Path) -> None:
    """A port that accepts TCP but never speaks (hung server, wrong service): still <= 5 s."""
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(good(tmp_path / "out")))
    # What starting the command costs on this machine right now (imports; a loaded CI
    # machine takes well over a second), so the bound below is the broker check's own.
    begin = time.monotonic()
    # (`--help` loads little since the submit path is imported after the command starts)
    subprocess.run([sys.executable, "-c", "import producer.cli, producer.submit, producer.wait"],
                   env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
                   timeout=60, check=True)
    start_cost = time.monotonic() - begin
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "CURATOR_BROKER_URL": f"redis://:hunter2-secret@127.0.0.1:{port}/0"}
        started = time.monotonic()
        proc = subprocess.Popen([str(BIN / "curator-submit"), str(spec_path)], env=env,
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            _, err = proc.communicate(timeout=7 + 2 * start_cost)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise AssertionError("no answer after 7 s and the start-up") from None
    # the 5 s budget, plus starting the command, plus slack for a loaded machine
    assert time.monotonic() - started <= 5.0 + 1.5 * start_cost + 0.5
    assert proc.returncode == 2 and f"127.0.0.1:{port}" in err and "hunter2" not in err


# --------------------------------------------------------------------------- every command
#
# Bad environment values, URLs, spec files and options, against every command, with a
# Redis of this module's own: nothing else uses it, so its DBSIZE proves that nothing was
# written. Each case must end within LIMIT seconds (a FIFO or /dev/zero used to hang, a
# 50 MB YAML or an alias bomb took tens of seconds).

LIMIT = 15.0
SECRET = "s3cr3t-Pa55"
COMMANDS = {
    "submit": ("curator-submit", "{spec}", "--queue", "curator-bad-env"),
    "jobs": ("curator-jobs", "list"),
    "worker": ("curator-worker", "-c", "1", "-Q", "curator-bad-env", "--without-mingle"),
}


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis server only this module's tests talk to."""
    with private_redis("curator-bad-input-redis-") as server:
        yield server


def run_bounded(argv: list[str], env: dict[str, str], cwd: Path = REPO,
                extra_path: str = "") -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command of the project in a session of its own; kill the session after LIMIT."""
    path = os.pathsep.join(p for p in (str(REPO), extra_path) if p)
    full = {k: v for k, v in os.environ.items() if not k.startswith("CURATOR_")}
    full.update(env, PYTHONPATH=path)
    started = time.monotonic()
    proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=full, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"{argv[0]} still running after {LIMIT:.0f}s: {err[-500:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), time.monotonic() - started


def assert_one_clear_line(done: subprocess.CompletedProcess[str], expect: str,
                          secrets: tuple[str, ...] = ()) -> None:
    """Exit 2, no traceback, one line on stderr holding ``expect``, no secret anywhere."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{done.stderr}"
    assert expect.lower() in lines[0].lower(), lines[0]
    for secret in secrets:
        assert secret not in done.stdout + done.stderr, f"{secret!r} shown: {lines[0]}"


def _pieces(secret: str) -> tuple[str, ...]:
    """``secret`` and its parts between special characters (each must stay hidden)."""
    parts = [p for p in re.split(r"[#/?@%\[\] ]", secret) if len(p) >= 3]
    return (secret, *parts)


# name -> (variable, value, expected text); values may use {port} and {password}
ENV_CASES: dict[str, tuple[str, str, str]] = {
    "visibility-abc": ("CURATOR_VISIBILITY_TIMEOUT", "abc", "CURATOR_VISIBILITY_TIMEOUT"),
    "visibility-negative": ("CURATOR_VISIBILITY_TIMEOUT", "-1", "whole number"),
    "visibility-zero": ("CURATOR_VISIBILITY_TIMEOUT", "0", "out of range"),
    "visibility-nan": ("CURATOR_VISIBILITY_TIMEOUT", "nan", "whole number"),
    "visibility-inf": ("CURATOR_VISIBILITY_TIMEOUT", "inf", "whole number"),
    "visibility-float": ("CURATOR_VISIBILITY_TIMEOUT", "3600.5", "whole number"),
    "visibility-huge": ("CURATOR_VISIBILITY_TIMEOUT", "9" * 30, "out of range"),
    "job-ttl-1e99": ("CURATOR_JOB_TTL", "1e99", "CURATOR_JOB_TTL"),
    "job-ttl-zero": ("CURATOR_JOB_TTL", "0", "out of range"),
    "task-events-maybe": ("CURATOR_TASK_EVENTS", "maybe", "use 1 or 0"),
    "queue-blank": ("CURATOR_QUEUE", "   ", "CURATOR_QUEUE"),
    "queue-control-char": ("CURATOR_QUEUE", "a\tb", "queue name"),
    "allowed-modules-bad": ("CURATOR_ALLOWED_MODULES", "mypipe, os;rm", "not a module name"),
    "allowed-modules-empty": ("CURATOR_ALLOWED_MODULES", ",,", "names no module"),
    "max-message-bytes-unit": ("CURATOR_MAX_MESSAGE_BYTES", "16MB", "CURATOR_MAX_MESSAGE_BYTES"),
    "max-message-bytes-huge": ("CURATOR_MAX_MESSAGE_BYTES", "9" * 30, "whole number of bytes"),
    "broker-not-a-url": ("CURATOR_BROKER_URL", SECRET, "not a URL"),
    "broker-no-host": ("CURATOR_BROKER_URL", "redis://:{password}@:{port}/0", "names no host"),
    "broker-password-hash": ("CURATOR_BROKER_URL", f"redis://:{SECRET}#x@127.0.0.1:{{port}}/0",
                             "percent-encoded"),
    "broker-password-slash": ("CURATOR_BROKER_URL",
                              f"redis://:{SECRET}/x@127.0.0.1:{{port}}/0", "percent-encoded"),
    "broker-password-question": ("CURATOR_BROKER_URL",
                                 f"redis://:ab?{SECRET}@127.0.0.1:{{port}}/0", "percent-encoded"),
    "broker-password-bracket": ("CURATOR_BROKER_URL",
                                f"redis://:[{SECRET}@127.0.0.1:{{port}}/0", "percent-encoded"),
    "broker-unbalanced-ipv6": ("CURATOR_BROKER_URL", f"redis://:{SECRET}@[::1:{{port}}/0",
                               "cannot be parsed"),
    "broker-bad-port": ("CURATOR_BROKER_URL", f"redis://:{SECRET}@127.0.0.1:99999/0",
                        "cannot be parsed"),
    "broker-socket-no-path": ("CURATOR_BROKER_URL", "redis+socket://", "names no socket file"),
    "backend-no-host": ("CURATOR_RESULT_BACKEND", f"redis://:{SECRET}@/0", "names no host"),
    "job-store-hash": ("CURATOR_JOB_STORE_URL", f"redis://:{SECRET}#1@127.0.0.1:{{port}}/0",
                       "percent-encoded"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case_id", list(ENV_CASES))
def test_bad_environment_is_one_line_for_every_command(
    case_id: str, command: str, tmp_path: Path, own_redis: RedisServer,
) -> None:
    """Every bad ``CURATOR_*`` value: one line, exit 2, no secret, nothing written."""
    name, value, expect = ENV_CASES[case_id]
    value = value.format(port=own_redis.port, password=own_redis.password)
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(good(tmp_path / "out")))
    env = {"CURATOR_BROKER_URL": own_redis.url, "CURATOR_QUEUE": "curator-bad-env", name: value}
    client = redis.Redis.from_url(own_redis.url)
    before = client.dbsize()
    argv = [a.format(spec=spec_path) for a in COMMANDS[command]]
    done, took = run_bounded(argv, env)
    assert_one_clear_line(done, expect, _pieces(SECRET) + (own_redis.password,))
    assert took < LIMIT
    assert client.dbsize() == before, "a key was written"
    assert not (tmp_path / "out").exists()


def _fifo(tmp: Path) -> str:
    path = tmp / "spec.yaml"
    os.mkfifo(path)
    return str(path)


def _write(name: str, text: str | bytes) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        path = tmp / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return str(path)
    return make


def _spec_with(name: str, **params: Any) -> Callable[[Path], str]:
    """The good spec as JSON (NaN and Infinity as JSON writes them) with source params set."""
    def make(tmp: Path) -> str:
        spec = good(tmp / "out")
        spec["source"]["params"].update(params)
        path = tmp / name
        path.write_text(json.dumps(spec))
        return str(path)
    return make


def _good_spec(tmp: Path) -> str:
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(good(tmp / "out")))
    return str(path)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 9)}]\n" for n in range(8)
) + "source: *i\n"
DEEP_YAML = "source: " + "[" * 5000 + "]" * 5000 + "\n"
DEEP_JSON = '{"source": ' + "[" * 100_000 + "]" * 100_000 + "}"
BIG_YAML = "metadata:\n" + "".join(f"  k{n}: {'x' * 60}\n" for n in range(40_000))

# name -> (spec file maker, extra arguments, expected text); {job} is a job id
INPUT_CASES: dict[str, tuple[Callable[[Path], str] | None, tuple[str, ...], str]] = {
    "spec-fifo": (_fifo, (), "FIFO, not a regular file"),
    "spec-dev-zero": (lambda tmp: "/dev/zero", (), "a device, not a regular file"),
    "spec-too-big": (_write("big.yaml", BIG_YAML), (), "larger than 1024 KiB"),
    "spec-alias-bomb": (_write("bomb.yaml", ALIAS_BOMB), (), "values (YAML aliases count"),
    "spec-many-aliases": (_write("aliases.yaml", "a: &a 1\nb: [" + ", ".join(["*a"] * 200)
                                 + "]\n"), (), "more than 100 YAML aliases"),
    "spec-deep-yaml": (_write("deep.yaml", DEEP_YAML), (), "nested deeper than 64"),
    "spec-deep-json": (_write("deep.json", DEEP_JSON), (), "nested deeper than 64"),
    "spec-not-utf8": (_write("bin.yaml", b"source: \xff\xfe\x00"), (), "not UTF-8"),
    "spec-bad-date": (_write("date.yaml", "metadata: {when: 2026-13-45}\n"), (),
                      "a value cannot be read"),
    "param-count-1e12": (_spec_with("c.json", count=1e12), (), "more than 10,000,000 indices"),
    "param-count-1e19": (_spec_with("c.json", count=1e19), (), "param 'count' must be int"),
    "param-count-huge-int": (_spec_with("c.json", count=10**30), (), "beyond 64 bits"),
    "param-nan": (_spec_with("n.json", work_ms=float("nan")), (), "param 'work_ms' holds nan"),
    "param-infinity": (_spec_with("i.json", sleep_ms=float("inf")), (), "holds inf"),
    "param-nan-string": (_spec_with("s.json", work_ms="nan"), (), "holds nan"),
    "param-1e400-string": (_spec_with("s.json", work_ms="1e400"), (), "holds inf"),
    "index-timeout-nan": (_good_spec, ("--index-timeout", "nan"), "--index-timeout must be"),
    "index-timeout-inf": (_good_spec, ("--index-timeout", "inf"), "--index-timeout must be"),
    "batch-time-limit-inf": (_good_spec, ("--batch-time-limit", "inf"), "--batch-time-limit"),
    "memory-limit-nan": (_good_spec, ("--index-memory-limit", "nan"), "--index-memory-limit"),
    "wait-timeout-nan": (_good_spec, ("--wait", "--timeout", "nan"), "--timeout must be"),
    "workers-huge": (_good_spec, ("--workers", "1000000000"), "--workers must be at most"),
    "retries-huge": (_good_spec, ("--retries", "1000000"), "--retries must be at most"),
    "queue-option-blank": (_good_spec, ("--queue", " "), "queue name"),
    "jobs-wait-timeout-nan": (None, ("wait", "{job}", "--timeout", "nan"), "--timeout must be"),
    "jobs-wait-timeout-negative": (None, ("wait", "{job}", "--timeout", "-1"),
                                   "--timeout must be"),
    "jobs-report-out-proc": (None, ("report", "{job}", "--out", "/proc"), "system folder"),
    "jobs-report-out-dev-null": (None, ("report", "{job}", "--out", "/dev/null"),
                                 "not a folder"),
    "jobs-list-limit-zero": (None, ("list", "--limit", "0"), "--limit must be"),
    "jobs-retry-unknown-job": (None, ("retry", "no-such-job"), "No job 'no-such-job'"),
}


@pytest.mark.parametrize("case_id", list(INPUT_CASES))
def test_bad_spec_file_param_or_option_is_one_line(
    case_id: str, tmp_path: Path, own_redis: RedisServer,
) -> None:
    """Spec files, params and numeric options: one line, exit 2, bounded time, no key."""
    make, args, expect = INPUT_CASES[case_id]
    env = {"CURATOR_BROKER_URL": own_redis.url, "CURATOR_QUEUE": "curator-bad-env"}
    client = redis.Redis.from_url(own_redis.url)
    before = client.dbsize()
    if make is None:
        argv = ["curator-jobs", *(a.format(job="20261130-000000-deadbeef") for a in args)]
    else:
        argv = ["curator-submit", make(tmp_path), *args]
    done, took = run_bounded(argv, env)
    assert_one_clear_line(done, expect, (own_redis.password,))
    assert done.stdout == ""
    assert took < LIMIT
    assert client.dbsize() == before, "a key was written"
    assert not (tmp_path / "out").exists()


def test_a_worker_whose_broker_never_answers_says_so_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    """A port that accepts TCP and never speaks: a clear line within 5 s, SIGTERM obeyed."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CURATOR_")}
        env.update(PYTHONPATH=str(REPO),
                   CURATOR_BROKER_URL=f"redis://:{SECRET}@127.0.0.1:{port}/0")
        log = tmp_path / "worker.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [str(BIN / "curator-worker"), "-c", "1", "-Q", "curator-silent"], env=env,
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 6
            while "does not answer" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "does not answer" in log.read_text(), log.read_text()
            proc.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                raise AssertionError("SIGTERM ignored for 3 s") from None
            assert time.monotonic() - stopped < 3
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    text = log.read_text()
    assert f"127.0.0.1:{port}" in text and "stopped by SIGTERM" in text, text
    assert SECRET not in text


@pytest.mark.parametrize("command", ["submit", "jobs"])
@pytest.mark.parametrize("url, expect", [
    pytest.param("redis://:{password}@:{port}/0", "names no host", id="no-host"),
    pytest.param(f"redis://:{SECRET}#1@127.0.0.1:{{port}}/0", "percent-encoded", id="hash"),
    pytest.param(f"redis://:{SECRET}/1@127.0.0.1:{{port}}/0", "percent-encoded", id="slash"),
])
def test_bad_broker_flag_is_one_line(command: str, url: str, expect: str, tmp_path: Path,
                                     own_redis: RedisServer) -> None:
    """``--broker`` gets the checks of CURATOR_BROKER_URL: one line, no secret, no key."""
    url = url.format(port=own_redis.port, password=own_redis.password)
    client = redis.Redis.from_url(own_redis.url)
    before = client.dbsize()
    argv = ([a.format(spec=_good_spec(tmp_path)) for a in COMMANDS["submit"]]
            if command == "submit" else ["curator-jobs", "list"])
    done, _ = run_bounded([*argv, "--broker", url], {})
    assert_one_clear_line(done, expect, _pieces(SECRET) + (own_redis.password,))
    assert client.dbsize() == before, "a key was written"
