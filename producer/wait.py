"""Waiting for a job: poll the job store's counters (never Celery result objects).

Works from any machine and for a job submitted elsewhere. If every batch is committed but
the job is not finished after a grace period (a lost chord callback), gather is sent again;
it is idempotent. Batches a Redis broker lost when a worker node died while receiving them
are sent again (:mod:`producer.rescue`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import closing, nullcontext

from curator_worker.config import Settings
from curator_worker.errors import JobWaitTimeout
from curator_worker.jobs import JobStatus, JobStore
from curator_worker.progress import ProgressReporter

#: Seconds a fully committed job may wait for its chord callback before gather is re-sent.
GATHER_GRACE = 15.0


def resend_gather(settings: Settings, job_id: str, queue: str) -> None:
    """Send ``curator.gather`` for ``job_id`` again (safe: gather is idempotent)."""
    from curator_worker.app import GATHER, create_app  # reads the environment: see wait_for_job

    app = create_app(settings)
    try:
        app.send_task(GATHER, args=([], job_id), queue=queue or settings.queue)
    finally:
        app.close()


def wait_for_job(
    store: JobStore,
    job_id: str,
    *,
    settings: Settings | None = None,
    progress: bool | str = True,
    poll: float = 0.25,
    timeout: float | None = None,
    watchdog: Callable[[], None] | None = None,
) -> JobStatus:
    """Block until ``job_id`` reaches a final state; show progress meanwhile.

    Parameters
    ----------
    store : JobStore
        The job store.
    job_id : str
        The job.
    settings : Settings, optional
        The cluster, to re-send a lost gather or lost batches; without it none is re-sent.
    progress : bool | "log"
        Bar on a TTY (log lines otherwise), ``"log"``, or ``False``.
    poll : float
        Seconds between reads of the counters.
    timeout : float, optional
        Give up after this many seconds (:class:`~curator_worker.errors.JobWaitTimeout`);
        the job keeps running.
    watchdog : callable, optional
        Called every poll; raises to abort (e.g. the embedded worker died).
    """
    # imported here, not at the top: curator_worker.app reads CURATOR_* when imported, and
    # the commands check those first to report a bad value in one line
    from producer.rescue import LostBatchRescue

    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise ValueError(f"The wait timeout must be a finite number of seconds, got {timeout!r}.")
    if not (math.isfinite(poll) and poll > 0):
        raise ValueError(f"The poll interval must be a positive number of seconds, got {poll!r}.")
    status = store.status(job_id)
    started = time.monotonic()
    committed_since: float | None = None
    rescue = LostBatchRescue(store, settings, job_id) if settings is not None else None
    with ProgressReporter(status.total, progress, label=f"job {job_id}",
                          started=status.started or status.created) as bar, \
            closing(rescue) if rescue is not None else nullcontext():
        while True:
            status, inflight, workers = store.progress(job_id)
            live = min(status.done + inflight, status.total - status.failed)
            bar.update(live, status.failed, note=f"workers {workers}")
            if status.is_final:
                bar.update(status.done, status.failed, note=status.state, force=True)
                return status
            if watchdog is not None:
                watchdog()
            now = time.monotonic()
            if rescue is not None:
                rescue.check(status)
            if status.all_committed and settings is not None:
                committed_since = committed_since or now
                if now - committed_since > GATHER_GRACE:
                    resend_gather(settings, job_id, status.queue)
                    committed_since = now
            if timeout is not None and now - started > timeout:
                raise JobWaitTimeout(job_id, timeout, status.processed, status.total)
            store.wait_for_change(job_id, poll)
