"""The README's quickstart, executed: the commands it shows really work."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support.cluster import REPO

BIN = Path(sys.executable).parent


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- quickstart:<marker> -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- quickstart:{marker} -->\n```\w+\n(.*?)```", text, re.S)
    assert found, f"README has no quickstart block {marker!r}"
    return found.group(1)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return tmp_path


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: the venv's bin on PATH, no CURATOR_* settings (but metrics stores
    in the test session's folder, not the user's cache)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CURATOR_") or k == "CURATOR_DB_DIR"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_embedded_quickstart(workdir: Path) -> None:
    done = run_bash(readme_block("embedded"), workdir, user_env())
    assert done.returncode == 0, done.stderr
    assert re.search(r"succeeded in [0-9.]+s: 2000 succeeded, 0 failed", done.stdout)
    stats = json.loads((workdir / "demo-out" / "stats.json").read_text())
    assert stats["items"] == 2000
    assert len(list((workdir / "demo-out" / "arrays").glob("*.npz"))) == 2000
    assert "embedded cluster stopped" in done.stderr
    # the gather that finished the job also removed its shards before the cluster stopped
    assert not list((workdir / "demo-out").glob("*.shards")), "shards left behind"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_cluster_quickstart(workdir: Path) -> None:
    """The cluster quickstart as a user runs it in bash: its own Redis on a free port (never
    the system one), a worker node, a job, and the commands that stop them really do."""
    script = readme_block("cluster")
    assert "6379" not in script, "the quickstart must start its own Redis, not use 6379"
    script += ('\nprintf "%s %s %s %s" "$PASSWORD" "$PORT" "$REDIS_PID" "$WORKER_PID"'
               " > quickstart.vars\n")
    proc = subprocess.Popen(["bash", "-c", script], cwd=workdir, env=user_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert re.search(r"succeeded in [0-9.]+s: 1000 succeeded, 0 failed", stdout)
        assert re.search(r"succeeded +1000 +0 +1000 ", stdout), stdout  # curator-jobs list
        password, port, redis_pid, worker_pid = (workdir / "quickstart.vars").read_text().split()
        assert len(password) == 32
        shown = stdout + stderr + (workdir / "worker.log").read_text()
        assert password not in shown, "password must not be shown"
        assert len(list((workdir / "demo-out" / "chunks").glob("*.npz"))) == 16
        # step 4 stopped what steps 1 and 2 started
        assert _gone(int(worker_pid)), "the worker node is still running"
        assert _gone(int(redis_pid)), "Redis is still running"
        assert _port_closed(int(port))
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # only if the script failed half-way
        except ProcessLookupError:
            pass
        proc.wait()


def tutorial_files() -> dict[str, str]:
    """The files the README's tutorial says to save: ``<!-- tutorial:<name> -->`` blocks."""
    text = (REPO / "README.md").read_text()
    return dict(re.findall(r"<!-- tutorial:([\w.]+) -->\n```python\n(.*?)```", text, re.S))


def test_tutorial(tmp_path: Path) -> None:
    """The tutorial's module and script, saved and run as it says: its four components give
    the same word counts and files on sequential, process_pool and the embedded celery."""
    files = tutorial_files()
    assert set(files) == {"wordcount.py", "run.py"}, set(files)
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    done = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, env=user_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "poem.txt").read_text().splitlines()
    expected = Counter(word for line in lines for word in line.lower().split())
    assert expected["the"] == 3
    for backend in ("sequential", "process_pool", "celery"):
        out = tmp_path / "out" / backend
        assert json.loads((out / "counts.json").read_text()) == expected, backend
        for index, line in enumerate(lines):
            written = (out / "words" / f"line_{index:04d}.txt").read_text()
            assert written.split() == line.lower().split(), (backend, index)
        assert re.search(rf"^{backend} \[.*line_0000.txt", done.stdout, re.M), done.stdout
        assert not [p for p in out.rglob("*") if "shard" in p.name], "shards left behind"
    # a parallel run's merge() writes exactly what a sequential run's flush() writes
    assert len({(tmp_path / "out" / b / "counts.json").read_bytes()
                for b in ("sequential", "process_pool", "celery")}) == 1


def test_python_quickstart(workdir: Path) -> None:
    code = readme_block("python")
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=user_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((workdir / "demo-out" / "py-stats.json").read_text())["items"] == 100
    assert not list((workdir / "demo-out").glob("*.shards")), "shards left behind"
