"""Job control: cancel, resume (re-send uncommitted batches), retry (re-run failed indices).

Each re-send is a new flat chord whose callback is the same idempotent gather, which only
finishes the job once every planned batch is committed.
"""

from __future__ import annotations

import logging

from curator_worker.config import Settings
from curator_worker.contract.planning import Batch, plan_batches
from curator_worker.contract.spec import build_pipeline
from curator_worker.errors import CuratorError
from curator_worker.messaging import create_app
from curator_worker.store import CANCELLED, SUCCEEDED, JobStore
from curator_worker.store.history import record_history
from curator_worker.store.keys import retry_prefix
from producer.joblock import job_control_lock
from producer.submit import publish_chord
from producer.wait import resend_gather

log = logging.getLogger(__name__)


def _store(settings: Settings) -> JobStore:
    settings.require_cluster()
    return JobStore.from_url(settings.effective_job_store_url, ttl=settings.job_ttl)


def cancel_job(settings: Settings, job_id: str) -> str:
    """Cancel ``job_id``: queued batches are skipped, running ones stop at their next index.

    Returns the state the job had before.

    Raises
    ------
    JobControlConflictError
        If a retry, resume or cancel of the job is in progress.
    """
    store = _store(settings)
    store.status(job_id)  # JobNotFoundError before the lock is written
    with job_control_lock(store, job_id, "cancel"):
        return store.cancel(job_id)


def resume_job(settings: Settings, job_id: str) -> int:
    """Re-send the batches of ``job_id`` that are not committed; return how many.

    Use it when every worker died and the queue was lost or purged, or after a cancel.
    A job whose batches are all committed gets its gather re-sent instead (0 is returned).

    Raises
    ------
    CuratorError
        If the job already succeeded.
    JobControlConflictError
        If a retry, resume or cancel of the job is in progress.
    """
    store = _store(settings)
    store.status(job_id)  # JobNotFoundError before the lock is written
    with job_control_lock(store, job_id, "resume"):
        return _resume(settings, store, job_id)


def _resume(settings: Settings, store: JobStore, job_id: str) -> int:
    status = store.status(job_id)
    if status.state == SUCCEEDED:
        raise CuratorError(f"Job {job_id} already succeeded; nothing to resume.")
    pending = store.uncommitted(job_id)
    if not pending:  # only the gather is left: its error (a failed merge) is retried too
        store.reopen(job_id, clear_error=True)
        record_history(store, job_id, "resume", batches=0)
        resend_gather(settings, job_id, status.queue)
        return 0
    store.reopen(job_id)
    record_history(store, job_id, "resume", batches=len(pending))
    batches = [Batch(key, indices) for key, indices in sorted(pending.items())]
    app = create_app(settings)
    try:
        publish_chord(app, job_id, batches, status.queue or settings.queue)
    finally:
        app.close()
    store.published(job_id)  # every batch is queued now, whatever a killed submit left
    log.info("job %s: re-sent %d uncommitted batches", job_id, len(batches))
    return len(batches)


def gather_again(settings: Settings, job_id: str) -> None:
    """Run ``job_id``'s gather again: merge its committed shards and finish it.

    For a job whose merge failed (a full disk, a user ``merge`` that raised) once the
    cause is fixed: the recorded error is cleared and ``curator.gather`` sent again.

    Raises
    ------
    CuratorError
        If the job already succeeded, or has batches that are not committed (use
        ``curator-jobs resume``).
    JobControlConflictError
        If a retry, resume, cancel or gather of the job is in progress.
    """
    store = _store(settings)
    store.status(job_id)  # JobNotFoundError before the lock is written
    with job_control_lock(store, job_id, "gather"):
        _gather_again(settings, store, job_id)


def _gather_again(settings: Settings, store: JobStore, job_id: str) -> None:
    status = store.status(job_id)
    if status.state == SUCCEEDED:
        raise CuratorError(f"Job {job_id} already succeeded; nothing to gather.")
    if not status.all_committed:
        raise CuratorError(
            f"Job {job_id} has {status.n_batches - status.committed_batches} batches not "
            f"committed; run `curator-jobs resume {job_id}` to send them (it gathers after)."
        )
    store.reopen(job_id, clear_error=True)
    resend_gather(settings, job_id, status.queue)
    log.info("job %s: gather re-sent", job_id)


def retry_job(settings: Settings, job_id: str) -> int:
    """Re-run only the failed indices of ``job_id`` (then gather again); return how many.

    Raises
    ------
    CuratorError
        If the job is still running, was cancelled, or has no failed index.
    SpecError
        If the job's spec no longer builds here (fix the cause first).
    JobControlConflictError
        If a retry, resume or cancel of the job is in progress.
    """
    store = _store(settings)
    store.status(job_id)  # JobNotFoundError before the lock is written
    with job_control_lock(store, job_id, "retry"):
        return _retry(settings, store, job_id)


def _retry(settings: Settings, store: JobStore, job_id: str) -> int:
    status = store.status(job_id)
    if not status.is_final:
        raise CuratorError(f"Job {job_id} is still {status.state}; wait for it before retrying.")
    if status.state == CANCELLED:
        raise CuratorError(f"Job {job_id} was cancelled; use `curator-jobs resume {job_id}`.")
    failed = sorted(store.failures(job_id))
    if not failed:
        raise CuratorError(f"Job {job_id} has no failed index to retry.")
    record = store.record(job_id)
    pipeline = build_pipeline(record["spec"], f"job {job_id}")
    size = int(record["options"].get("batch_size") or 1)
    round_number = int(record.get("retries") or 0) + 1
    batches = plan_batches(pipeline.partition_groups(failed), size, retry_prefix(round_number))
    # Plan the new batches before reopening: a late gather (the previous chord's callback
    # arrives after the last batch already gathered) then never sees a running job whose
    # planned batches are all committed, and cannot finish it before the retry round runs.
    store.add_batches(job_id, [(b.key, b.indices) for b in batches])
    record_history(store, job_id, "retry", round=round_number, indices=len(failed),
                   batches=len(batches))
    store.reopen(job_id, clear_error=True)
    app = create_app(settings)
    try:
        publish_chord(app, job_id, batches, status.queue or settings.queue)
    finally:
        app.close()
    log.info("job %s: retrying %d failed indices in %d batches", job_id, len(failed),
             len(batches))
    return len(failed)
