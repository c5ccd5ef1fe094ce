"""Fixtures and helpers for the deployment tests: docker/compose.yaml and docker/Dockerfile
read as data, their commands run here against the test session's own Redis.

Nothing here needs a Docker engine. Every process a fixture starts is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from celery import Celery

from curator_worker import run_pipeline
from curator_worker.config import Settings
from curator_worker.contract.spec import build_pipeline
from curator_worker.embedded import RedisServer, stop_process
from curator_worker.messaging import create_app
from tests.support.cluster import REPO

DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
BIN = Path(sys.executable).parent
#: Where compose.yaml mounts the shared volume (and the image's working directory).
DATA_MOUNT = "/data"
#: Host and port of Redis as the compose services see it.
COMPOSE_REDIS = "redis:6379"

# -- compose.yaml -----------------------------------------------------------------------

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose-style interpolation of ``text``: ``$$``, ``$VAR``, ``${VAR}``,
    ``${VAR:-default}`` and ``${VAR-default}`` (the forms compose.yaml uses)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        expr = match.group("braced") or ""
        for sep, when_empty in ((":-", True), ("-", False)):
            if sep in expr:
                name, default = expr.split(sep, 1)
                value = env.get(name)
                if value is None or (when_empty and value == ""):
                    return interpolate(default, env)
                return value
        return env.get(expr, "")

    return _VAR.sub(replace, text)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml parsed with PyYAML (anchors merged), interpolated with ``env``
    (default: no variables set, so every default applies)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return _interpolate_tree(raw, env or {})


def service_command(service: Mapping[str, Any]) -> list[str]:
    """A service's command as an argv list (string commands are split like a shell)."""
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a dict (accepts the list and mapping forms)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def console_scripts() -> set[str]:
    """The console scripts pyproject.toml installs (curator-submit, curator-worker, ...)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(data["project"]["scripts"])


def swap_redis_host(url: str, redis_server: RedisServer) -> str:
    """``url`` with compose's ``redis:6379`` replaced by the test Redis's host and port."""
    parts = urlsplit(url)
    assert parts.hostname == "redis" and parts.port == 6379, url
    netloc = parts.netloc.replace(COMPOSE_REDIS, f"127.0.0.1:{redis_server.port}")
    return urlunsplit(parts._replace(netloc=netloc))


def map_data_paths(argv: Sequence[str], data_dir: Path) -> list[str]:
    """``argv`` with paths under the shared volume's mount point moved to ``data_dir``."""
    out = []
    for arg in argv:
        if arg == DATA_MOUNT or arg.startswith(DATA_MOUNT + "/"):
            arg = str(data_dir) + arg[len(DATA_MOUNT):]
        out.append(arg)
    return out


def resolve_executable(argv: Sequence[str]) -> list[str]:
    """``argv`` with its program taken from the project's venv (where the image has it)."""
    program = BIN / argv[0]
    assert program.exists(), f"{argv[0]} is not installed in {BIN}"
    return [str(program), *argv[1:]]


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for subprocesses: no CURATOR_* from the developer's shell, the
    venv first on PATH, the repository importable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CURATOR_", "FLOWER_", "CELERY_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


# -- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of a Dockerfile, continuation lines joined and
    comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        logical.append(current)
        current = ""
    if current.strip():
        logical.append(current.strip())
    out = []
    for entry in logical:
        instruction, _, args = entry.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def healthcheck_argv(args: str) -> list[str]:
    """The command of a ``HEALTHCHECK [OPTIONS] CMD ...`` instruction as an argv."""
    tokens = args.split(" ")
    while tokens and tokens[0].startswith("--"):
        tokens.pop(0)
    assert tokens and tokens[0] == "CMD", f"HEALTHCHECK without CMD: {args!r}"
    command = " ".join(tokens[1:]).strip()
    if command.startswith("["):
        return [str(a) for a in json.loads(command)]
    return ["/bin/sh", "-c", command]


# -- processes ----------------------------------------------------------------------------


@dataclass
class Proc:
    """A subprocess started in its own session, with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        """The last lines of the log."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, grace: float = 20.0) -> None:
        """Stop the process and its children (by its pid)."""
        stop_process(self.proc, grace=grace)


def start(name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path,
          cwd: Path | None = None) -> Proc:
    """Start ``argv`` in a new session, output to ``log_dir/<name>.log``."""
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=str(cwd or REPO), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return Proc(name, proc, log)


def wait_for_nodes(app: Celery, names: Sequence[str], procs: Sequence[Proc],
                   timeout: float = 60.0) -> None:
    """Block until every node in ``names`` answers a ping, or fail with the logs."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.proc.poll() is not None:
                pytest.fail(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.tail()}")
        replies = app.control.ping(destination=list(names), timeout=0.5) or []
        seen |= {name for reply in replies for name in reply}
        if set(names) <= seen:
            return
    logs = "\n\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    pytest.fail(f"nodes {list(names)} not ready after {timeout:.0f}s (saw {seen}):\n{logs}")


def unique(prefix: str) -> str:
    """``prefix`` plus a random suffix (queue and node names no one else uses)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- results ------------------------------------------------------------------------------


def sequential_stats(tmp: Path, spec: Mapping[str, Any],
                     indices: list[int] | None = None) -> bytes:
    """The FieldStats file of a sequential run of ``spec``, outputs moved under ``tmp``.

    Sleeps and busy work are dropped: they change the timing, not the data.
    """
    seq = json.loads(json.dumps(spec))
    seq["source"]["params"].pop("sleep_ms", None)
    seq["source"]["params"].pop("work_ms", None)
    seq["filters"][0]["params"]["output"] = str(tmp / "seq-stats.json")
    seq["sink"]["params"]["output_dir"] = str(tmp / "seq-out")
    run_pipeline(build_pipeline(seq), backend="sequential", indices=indices)
    return (tmp / "seq-stats.json").read_bytes()


# -- fixtures -----------------------------------------------------------------------------


@dataclass
class ComposeWorker:
    """The compose ``worker`` service's command, running here against the test Redis."""

    proc: Proc
    node: str
    queue: str
    env: dict[str, str]
    settings: Settings
    data_dir: Path


def seed_data_dir(data_dir: Path) -> None:
    """Fill ``data_dir`` as the image fills ``/data``: the Dockerfile's ``COPY src /data/...``."""
    for instruction, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction != "COPY":
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        *sources, dest = parts
        if not dest.startswith(DATA_MOUNT + "/"):
            continue
        target = data_dir / dest[len(DATA_MOUNT) + 1:]
        for src in sources:
            shutil.copytree(REPO / src, target, dirs_exist_ok=True)


@pytest.fixture(scope="session")
def compose_worker(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[ComposeWorker]:
    """compose.yaml's worker command and environment (Redis host swapped for the test
    Redis, on a queue of its own), run as a subprocess with the shared volume emulated by
    a temp folder."""
    queue = unique("deploy")
    compose = load_compose({"REDIS_PASSWORD": redis_server.password, "CURATOR_QUEUE": queue})
    service = compose["services"]["worker"]
    env = service_environment(service)
    env["CURATOR_BROKER_URL"] = swap_redis_host(env["CURATOR_BROKER_URL"], redis_server)
    data_dir = tmp_path_factory.mktemp("data")
    seed_data_dir(data_dir)
    logs = tmp_path_factory.mktemp("deploy-logs")
    argv = resolve_executable(map_data_paths(service_command(service), data_dir))
    full_env = base_env(env)
    cwd = Path(map_data_paths([service.get("working_dir", DATA_MOUNT)], data_dir)[0])
    proc = start("compose-worker", argv, full_env, logs, cwd=cwd)
    node = f"curator@{socket.gethostname()}"  # curator-worker's default node name
    settings = Settings.from_env(full_env)
    app = create_app(settings)
    try:
        wait_for_nodes(app, [node], [proc])
        yield ComposeWorker(proc, node, queue, env, settings, data_dir)
    finally:
        app.close()
        proc.stop()

