"""The test process playing a worker process (tasks run in-process, in a certain order)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from curator_worker.store import JobStore
from curator_worker.worker import tasks


@contextmanager
def as_worker_process(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobStore]:
    """Tasks in this process use ``store``, with the worker caches empty before and after."""
    monkeypatch.setattr(tasks, "_store", store)
    tasks._job_context.cache_clear()
    tasks.pipeline_for_job.cache_clear()
    try:
        yield store
    finally:
        tasks._job_context.cache_clear()
        tasks.pipeline_for_job.cache_clear()
