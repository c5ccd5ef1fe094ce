"""The README's quickstart, executed: the commands it shows really work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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


def test_cluster_quickstart(workdir: Path, redis_server) -> None:
    script = readme_block("cluster").replace("redis://localhost:6379/0", redis_server.url)
    lines = []
    for line in script.splitlines():
        lines.append(line)
        if line.rstrip().endswith("&"):
            lines.append("WORKER_PID=$!")
            lines.append("trap 'kill -TERM $WORKER_PID; wait $WORKER_PID' EXIT")
    done = run_bash("\n".join(lines), workdir, user_env())
    assert done.returncode == 0, done.stderr
    assert re.search(r"succeeded in [0-9.]+s: 1000 succeeded, 0 failed", done.stdout)
    assert redis_server.password not in done.stdout + done.stderr, "password must not be shown"
    assert len(list((workdir / "demo-out" / "chunks").glob("*.npz"))) == 16


def test_python_quickstart(workdir: Path) -> None:
    code = readme_block("python")
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=user_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((workdir / "demo-out" / "py-stats.json").read_text())["items"] == 100
    assert not list((workdir / "demo-out").glob("*.shards")), "shards left behind"
