"""`make demo` on a fresh checkout: installs only what a job needs, and the job runs.

A copy of the tracked files (what a user clones), a fresh virtualenv made by the Makefile,
no CURATOR_* settings: the demo job must succeed on the embedded default with the core
dependencies alone (this caught kombu 5.7's Redis transport needing ``packaging``, which
kombu now ships only in its ``redis`` extra), and the dev set (pytest, dask, ...) must not
be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster import REPO


def _tracked_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_the_core_only_and_runs_the_job(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _tracked_copy(checkout)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CURATOR_", "PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run(["make", "demo", f"PYTHON={sys.executable}"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert re.search(r"succeeded in [0-9.]+s: 2000 succeeded, 0 failed", done.stdout)
    site = next((checkout / ".venv" / "lib").glob("python3*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"celery", "kombu", "redis", "numpy", "curator_worker"} <= installed
    assert not installed & {"pytest", "dask", "distributed", "ruff", "py_spy", "matplotlib"}
