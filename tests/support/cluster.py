"""Starting and stopping real Celery worker nodes for tests (by pid, always)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from curator_worker.config import Settings
from curator_worker.embedded import RedisServer, stop_process, worker_command
from curator_worker.messaging import create_app

REPO = Path(__file__).resolve().parents[2]


class WorkerNode:
    """One ``celery worker`` subprocess of this project's app."""

    def __init__(self, env: dict[str, str], name: str, concurrency: int, queue: str,
                 log_dir: Path, extra: list[str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log = log_dir / f"{name.split('@')[0]}.log"
        command = worker_command(concurrency, name, queue, loglevel="INFO") + (extra or [])
        full_env = {**os.environ, **env,
                    "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                command, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(cwd or REPO),
            )

    def stop(self) -> None:
        """Warm shutdown, then kill if it does not stop."""
        stop_process(self.proc, grace=20.0)

    def tail(self, n: int = 30) -> str:
        """The last lines of the node's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def wait_until_ready(app: Celery, names: list[str], nodes: list[WorkerNode],
                     timeout: float = 60.0) -> None:
    """Block until every node answers a ping (or raise with the logs)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for node in nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(f"worker {node.name} exited:\n{node.tail()}")
        replies = app.control.ping(timeout=0.5) or []
        seen |= {name for reply in replies for name in reply}
        if set(names) <= seen:
            return
    logs = "\n".join(node.tail() for node in nodes)
    raise RuntimeError(f"workers {names} not ready after {timeout}s (saw {seen}):\n{logs}")


@contextmanager
def running_nodes(settings: Settings, names: list[str], concurrency: int, log_dir: Path,
                  env: dict[str, str] | None = None,
                  homes: dict[str, Path] | None = None) -> Iterator[list[WorkerNode]]:
    """Worker nodes ``names`` on ``settings``' broker and queue, ready (each answers a
    ping) inside the block, stopped after it by pid whatever happens.

    ``env`` is added to each node's environment (credentials, endpoints); ``homes`` gives
    a node its own working folder (and ``TMPDIR`` under it): hosts sharing no folder.
    """
    nodes = []
    app = create_app(settings)
    try:
        for name in names:
            node_env = {**settings.environ(), **(env or {})}
            home = (homes or {}).get(name)
            if home is not None:
                (home / "tmp").mkdir(parents=True, exist_ok=True)
                node_env["TMPDIR"] = str(home / "tmp")
            nodes.append(WorkerNode(node_env, name, concurrency, settings.queue, log_dir,
                                    cwd=home))
        wait_until_ready(app, names, nodes)
        yield nodes
    finally:
        app.close()
        for node in nodes:
            node.stop()


def python() -> str:
    """The interpreter running the tests (the project's venv)."""
    return sys.executable


@contextmanager
def private_redis(prefix: str = "curator-test-redis-") -> Iterator[RedisServer]:
    """A Redis server of the test's own, on a free port with a password; stopped by pid."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def sigint_as_default() -> None:
    """``preexec_fn`` for a child a test sends SIGINT (Ctrl-C) to.

    A shell without job control starts background commands with SIGINT ignored, and
    children inherit that: a suite started as ``make test &`` would send its Ctrl-C to
    processes that ignore it. The child takes SIGINT as a terminal's Ctrl-C again.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
