"""The layout keeps its promises: the producer side never builds the workers' app."""

from __future__ import annotations

import subprocess
import sys

from tests.support.cluster import REPO


def test_the_producer_side_imports_neither_the_workers_app_nor_their_tasks() -> None:
    code = (
        "import sys\n"
        "import curator_worker, curator_worker.backends.celery\n"
        "import producer.cli, producer.submit, producer.wait, producer.control\n"
        "import producer.clients, producer.rescue, producer.publish, producer.job_views\n"
        "print(sorted(m for m in ('curator_worker.worker.app', 'curator_worker.worker.tasks')"
        " if m in sys.modules))\n"
    )
    # a CURATOR_* value the workers' app would refuse when built: importing must not read it
    env = {"PATH": "/usr/bin:/bin", "CURATOR_VISIBILITY_TIMEOUT": "not-a-number"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_earlier_import_paths_give_the_moved_modules_themselves() -> None:
    code = (
        "import importlib, curator_worker\n"
        "from curator_worker.earlier_import_paths import MOVED\n"
        "for old, new in sorted(MOVED.items()):\n"
        "    alias, home = importlib.import_module(old), importlib.import_module(new)\n"
        "    assert alias is home, old\n"
        "    assert home.__spec__.name == new, (old, home.__spec__.name)\n"
        "from curator_worker.tasks import process_batch\n"
        "from curator_worker.worker.tasks import process_batch as moved\n"
        "assert process_batch is moved\n"
        "import curator_worker.app as a\n"
        "print(type(a.app).__name__, len(MOVED))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "Celery"


def test_a_module_that_never_existed_is_still_missing() -> None:
    import importlib

    import pytest

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("curator_worker.no_such_module")
