"""The embedded cluster (no broker configured) stops warm after a job, at once otherwise."""

from __future__ import annotations

import time

import psutil
import pytest

from curator_worker import run_pipeline
from curator_worker.components import NpzPerIndex, SyntheticArrays
from curator_worker.embedded import WARM_STOP_SECONDS
from curator_worker.errors import JobWaitTimeout


@pytest.mark.usefixtures("clean_env")
def test_an_interrupted_run_stops_its_embedded_cluster_at_once(tmp_path) -> None:
    """A run that ends in an error (here its wait times out) while a batch is running does
    not wait for that batch: the node is stopped at once, not shut down warm (which the
    README quickstart test covers: a job that ended leaves no shards)."""
    pipeline = SyntheticArrays(count=2, size=4, sleep_ms=120_000).write(
        NpzPerIndex(output_dir=str(tmp_path / "out")))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    with pytest.raises(JobWaitTimeout, match="on the embedded cluster, which is stopped"):
        run_pipeline(pipeline, backend="celery", n_jobs=1, timeout=3)
    # start-up (1-2 s) + 3 s of waiting + a cold stop; a warm one would add 10 s
    assert time.monotonic() - started < 3 + WARM_STOP_SECONDS
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
