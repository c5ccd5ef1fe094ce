"""What the commands load before they start work (issue 19: the embedded default's start to
first index). ``curator-submit`` starts an embedded cluster's worker node before it
imports Celery or Redis, and the node starts without Celery's command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import curator_worker
from curator_worker.embedded import worker_command


def loaded_after(statement: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    code = (f"{statement}\nimport sys\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", [
    "import curator_worker",
    "import producer.cli",
    "from curator_worker.embedded import cluster_for, LocalCluster",
    "from producer.cli import submit_main, jobs_main",
])
def test_the_command_line_and_the_embedded_cluster_load_neither_celery_nor_redis(
        statement: str) -> None:
    loaded = loaded_after(statement)
    assert not loaded & {"celery", "kombu", "redis", "numpy", "flower"}, loaded


def test_every_public_name_is_there_on_first_use() -> None:
    namespace: dict[str, object] = {}
    exec("from curator_worker import *", namespace)  # noqa: S102 - what a user may write
    assert set(curator_worker.__all__) <= set(namespace)
    assert namespace["run_pipeline"] is curator_worker.run_pipeline
    assert set(curator_worker.__all__) <= set(dir(curator_worker))
    assert curator_worker.CeleryBackend.name == "celery"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        curator_worker.nope  # noqa: B018
    with pytest.raises(ImportError):
        from curator_worker import NopeBackend  # noqa: F401


def test_jobs_commands_from_job_views_are_listed_and_found() -> None:
    from click.testing import CliRunner

    from producer.cli import jobs_group

    out = CliRunner().invoke(jobs_group, ["--help"])
    assert out.exit_code == 0
    assert "failures" in out.output and "dashboard" in out.output
    out = CliRunner().invoke(jobs_group, ["failures", "--help"])
    assert out.exit_code == 0 and "Usage" in out.output


def test_the_node_command_is_celerys_worker_without_its_command_line() -> None:
    argv = worker_command(3, "a@b", "q1", loglevel="INFO")
    assert argv[:3] == [sys.executable, "-m", "curator_worker.worker"]
    assert "celery" not in argv
    done = subprocess.run([*argv[:3], "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--concurrency" in done.stdout
    bad = subprocess.run([*argv[:3], "--concurrency", "0", "--hostname", "a@b", "--queues",
                          "q"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--concurrency must be at least 1" in bad.stderr
