"""Worker processes cache a job's record and pipeline, and never serve one job another's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curator_worker.components import FileGlob, NpzPerIndex
from curator_worker.contract.spec import pipeline_to_spec
from curator_worker.store import JobStore
from curator_worker.worker import tasks
from tests.support.worker import as_worker_process


@pytest.fixture()
def worker_process(redis_server, monkeypatch: pytest.MonkeyPatch) -> JobStore:
    """This test process plays a worker process with a fresh cache."""
    with as_worker_process(JobStore.from_url(redis_server.url), monkeypatch) as store:
        yield store


def test_a_later_job_with_the_same_spec_sees_the_files_added_since(
    tmp_path: Path, worker_process: JobStore
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "a.npy", np.arange(3))
    spec = pipeline_to_spec(FileGlob(pattern="*.npy", root=str(data))
                            .write(NpzPerIndex(output_dir=str(tmp_path / "out"))))
    worker_process.create_job("cache-job-1", spec, {}, [("b000000", [0])], total=1, queue="q")
    first = tasks.pipeline_for_job("cache-job-1")
    assert len(first) == 1
    assert tasks.pipeline_for_job("cache-job-1") is first, "built once per job"

    np.save(data / "b.npy", np.arange(4))
    worker_process.create_job("cache-job-2", spec, {}, [("b000000", [0, 1])], total=2,
                              queue="q")
    assert len(tasks.pipeline_for_job("cache-job-2")) == 2
