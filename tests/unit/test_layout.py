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
        "print(sorted(m for m in ('curator_worker.app', 'curator_worker.tasks')"
        " if m in sys.modules))\n"
    )
    # a CURATOR_* value the workers' app would refuse when built: importing must not read it
    env = {"PATH": "/usr/bin:/bin", "CURATOR_VISIBILITY_TIMEOUT": "not-a-number"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
