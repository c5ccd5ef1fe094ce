"""docker/Dockerfile read as data (no Docker engine here): base image, user, what it
copies, and its health check run against a live worker."""

from __future__ import annotations

import os
import re
import socket
import subprocess

from tests.deploy.conftest import (
    DOCKERFILE,
    ComposeWorker,
    base_env,
    dockerfile_instructions,
    healthcheck_argv,
)
from tests.support.cluster import REPO


def _instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def _last(name: str) -> str:
    found = [args for instruction, args in _instructions() if instruction == name]
    assert found, f"the Dockerfile has no {name}"
    return found[-1]


def test_base_image_is_python_311_slim() -> None:
    froms = [args for instruction, args in _instructions() if instruction == "FROM"]
    assert len(froms) == 1
    assert froms[0].split()[0].split("@")[0] == "python:3.11-slim"


def test_runs_as_a_non_root_user() -> None:
    user = _last("USER").split(":")[0]
    assert user not in {"root", "0", ""}
    useradds = [args for instruction, args in _instructions()
                if instruction == "RUN" and "useradd" in args and user in args]
    assert useradds, f"user {user!r} is created in the image"


def test_installs_the_project_from_files_that_exist() -> None:
    runs = " && ".join(args for instruction, args in _instructions() if instruction == "RUN")
    assert re.search(r"pip install '?\.(\[[a-z0-9,]+\])?'?( |$)", runs), runs
    assert "parquet" in runs and "s3" in runs, "worker images run every shipped component"
    for instruction, args in _instructions():
        if instruction in {"COPY", "ADD"}:
            *sources, _dest = [p for p in args.split() if not p.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"{instruction} {src}: not in the build context"
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" not in [line.strip("!/") for line in ignore if line.startswith("!")]


def test_default_command_is_the_worker() -> None:
    assert _last("CMD") == '["curator-worker"]'


def test_healthcheck_pings_the_live_worker_and_fails_without_it(
        compose_worker: ComposeWorker) -> None:
    """The HEALTHCHECK command, run here as Docker runs it (``/bin/sh -c`` with the
    container's environment, where ``HOSTNAME`` is the container's host name)."""
    argv = healthcheck_argv(_last("HEALTHCHECK"))
    env = base_env(compose_worker.env)
    cwd = compose_worker.data_dir

    healthy = subprocess.run(argv, env={**env, "HOSTNAME": socket.gethostname()}, cwd=cwd,
                             capture_output=True, text=True, timeout=60)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert compose_worker.node in healthy.stdout

    other_host = f"no-such-host-{os.getpid()}"
    unhealthy = subprocess.run(argv, env={**env, "HOSTNAME": other_host}, cwd=cwd,
                               capture_output=True, text=True, timeout=60)
    assert unhealthy.returncode != 0, unhealthy.stdout


def test_healthcheck_argv_parsing() -> None:
    """The reader handles both HEALTHCHECK forms."""
    exec_form = healthcheck_argv('--interval=5s CMD ["python", "-c", "print(1)"]')
    assert exec_form == ["python", "-c", "print(1)"]
    assert healthcheck_argv("CMD true || exit 1") == ["/bin/sh", "-c", "true || exit 1"]
