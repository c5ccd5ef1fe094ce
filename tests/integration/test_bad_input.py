"""Bad input to the real ``curator-submit``: exit 2, one line on stderr, nothing enqueued.

Every case runs the installed command against the test session's Redis with a queue of
its own (``--queue``), and checks: exit code 2, exactly one line on stderr saying what is
wrong (never a traceback), nothing on stdout, no message on that queue and no job created
(the ``curator:jobs`` sorted set is unchanged). No worker is needed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from curator_worker.embedded import free_port
from curator_worker.jobs import JOBS_INDEX, JobStore
from tests.support.cluster import REPO
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
            _, err = proc.communicate(timeout=7)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise AssertionError("no answer after 7 s") from None
    assert time.monotonic() - started <= 5.0 + 1.0  # 5 s budget plus interpreter start
    assert proc.returncode == 2 and f"127.0.0.1:{port}" in err and "hunter2" not in err
