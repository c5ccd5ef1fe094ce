"""Gather: merge committed filter shards into final outputs and finish the job (the
shards themselves, from naming to removal, are :mod:`curator_worker.shards`).

Gather is the chord callback of every Celery job; the batch whose commit completes the job
runs it at once too, in its own process, so a job ends without waiting for the callback's
delivery (the callback then finds the job finished). It merges only *committed* shards (so
a killed attempt can never double-count), writes each final file atomically, removes the
job's shard folders and sets the job's final state. It is idempotent: running it twice,
or after a crash half-way, gives the same result; a lock keeps two from overlapping. A
``partial`` or ``failed`` job keeps its shards so that ``curator-jobs retry`` can merge
them again with the retried indices'.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from curator_worker.atomic import (
    remove_stale_scratch,
    remove_stale_temps,
)
from curator_worker.contract.pipeline import Pipeline, is_stateful
from curator_worker.contract.spec import spec_hash
from curator_worker.shards import (
    SHARD_SUFFIX,
    GatherLockLost,
    is_url,
    merge_shards,
    output_path_of,
    remove_shard_locations,
    storage_options_of,
)
from curator_worker.store import FAILED, FINAL_STATES, PARTIAL, RUNNING, SUCCEEDED, JobStore

log = logging.getLogger(__name__)


def gather_job(
    store: JobStore, job_id: str, pipeline: Pipeline | None, spec_digest: str | None = None
) -> str:
    """Merge a job's committed shards, finish the job and return its final state.

    Parameters
    ----------
    store : JobStore
        The job store.
    job_id : str
        The job.
    pipeline : Pipeline | None
        The job's pipeline, or ``None`` when it could not be built (systemic failure).
    spec_digest : str, optional
        The hash of the job's spec, when the caller has it (else it is read from the job).

    One gather runs at a time per job (:meth:`JobStore.gather_lease`); a gather that finds
    another one running returns the current state and leaves the job to it. A finished
    job's state never changes: a second gather is a no-op, and a gather that lost its lock
    (its node froze past the lock's expiry) stops without writing a file or a state.
    """
    with store.gather_lease(job_id) as token:
        if token is None:
            log.info("job %s: another gather is running; it finishes the job", job_id)
            return store.state(job_id) or RUNNING
        try:
            return _gather_locked(store, job_id, pipeline, spec_digest, token)
        except GatherLockLost:
            log.warning("job %s: this gather lost its lock (its process was stalled); it "
                        "stops without writing, the gather holding the lock finishes the job",
                        job_id)
            return store.state(job_id) or RUNNING


def _gather_locked(
    store: JobStore, job_id: str, pipeline: Pipeline | None, spec_digest: str | None,
    token: str,
) -> str:
    status = store.status(job_id)
    stateful = (
        [(n, f) for n, f in enumerate(pipeline.filters) if is_stateful(f)] if pipeline else []
    )
    if status.state in FINAL_STATES:
        log.info("job %s already %s; gather has nothing to do", job_id, status.state)
        if status.state == SUCCEEDED:
            remove_shard_locations(stateful, job_id)
        return status.state

    if not status.all_committed:
        # A gather of an earlier chord (before a resume or retry) fired while batches of
        # the new one are still running: the new chord's gather finishes the job.
        log.info("job %s: %d/%d batches committed; not finishing yet", job_id,
                 status.committed_batches, status.n_batches)
        return status.state

    def still_held() -> bool:
        return store.holds_gather_lock(job_id, token)

    error = status.error
    # merged: an earlier gather merged and removed the shards, then died before the state
    if pipeline is not None and error is None and stateful and not store.is_merged(job_id):
        records = store.commit_records(job_id)
        for n, f in stateful:
            shards = sorted(
                r["shards"][str(n)] for r in records.values() if str(n) in r.get("shards", {})
            )
            final = output_path_of(f)
            try:
                merge_shards(f, shards, final, still_held)
                log.info("job %s: merged %d shards into %s", job_id, len(shards), final)
            except GatherLockLost:
                raise
            except Exception as exc:  # noqa: BLE001 - a user's merge failing is systemic
                if not still_held():  # e.g. the shards went with the gather that took over
                    raise GatherLockLost(final) from exc
                error = f"merging {type(f).__name__} shards failed: {type(exc).__name__}: {exc}"
                break

    if error is not None or pipeline is None:
        state = FAILED
    elif status.failed:
        state = PARTIAL
    else:
        state = SUCCEEDED
    if state in (SUCCEEDED, PARTIAL):
        _remember_cost(store, job_id, spec_digest)  # before the state: the next job uses it
    if state == SUCCEEDED and stateful:
        # Before the state, so whoever waits on the job never sees the shards. Partial,
        # failed and cancelled jobs keep theirs: `curator-jobs retry` or `resume` merges
        # them again.
        if not store.mark_merged(job_id, lock=token):
            raise GatherLockLost(job_id)
        remove_shard_locations(stateful, job_id)
    fields = {"error": error} if error is not None and status.error is None else {}
    if not store.set_state(job_id, state, lock=token, **fields):
        now = store.state(job_id)
        if now in FINAL_STATES:  # cancelled meanwhile: the first final state stays
            log.info("job %s ended %s meanwhile; gather leaves it so", job_id, now)
            return now or state
        raise GatherLockLost(job_id)
    if pipeline is not None:
        remove_abandoned_temps(pipeline)
    log.info("job %s finished %s (%d done, %d failed)", job_id, state, status.done, status.failed)
    return state


def _remember_cost(store: JobStore, job_id: str, spec_digest: str | None) -> None:
    """Keep the job's cost per index for the next job of its spec (batch sizes)."""
    try:
        digest = spec_digest or spec_hash(store.record(job_id)["spec"])
        store.remember_index_cost(job_id, digest)
    except Exception:  # noqa: BLE001 - a sizing hint must never fail a finished job
        log.debug("job %s: could not record its cost per index", job_id, exc_info=True)


def remove_abandoned_temps(pipeline: Pipeline, own: bool = False) -> None:
    """Temp files of writes killed or failed mid-way (sink outputs, final filter outputs).

    ``own``: also every temp file of this process (see
    :func:`~curator_worker.atomic.remove_stale_temps`). URL outputs have none (an object
    is written in one write) and are skipped.
    """
    folders = {os.path.dirname(os.path.abspath(output_path_of(f)))
               for f in pipeline.filters if is_stateful(f) and not is_url(output_path_of(f))}
    output_dir = getattr(pipeline.sink, "output_dir", None)
    if isinstance(output_dir, str | os.PathLike) and not is_url(os.fspath(output_dir)):
        folders.add(os.fspath(output_dir))
    for folder in folders:
        remove_stale_temps(folder, own=own)
    if any(is_url(output_path_of(f)) for f in pipeline.filters if is_stateful(f)):
        remove_stale_scratch()


def gather_pipeline(pipeline: Pipeline) -> list[str]:
    """Merge shards left by parallel runs of ``pipeline`` into each stateful filter's output.

    Backends in this package gather by themselves; call this after a run that left shards
    (for example one interrupted before its gather). Shards are removed once merged.
    Works for local outputs and URL outputs (``<output>.shards/`` listed on the store).

    Returns
    -------
    list[str]
        The final outputs written.
    """
    written = []
    for f in pipeline.filters:
        if not is_stateful(f):
            continue
        final = output_path_of(f)
        if is_url(final):
            from curator_worker.components.storage import list_objects, remove_prefix

            options = storage_options_of(f)
            shards = list_objects(f"{final}.shards/", options, suffix=SHARD_SUFFIX)
            if not shards:
                continue
            written.append(merge_shards(f, shards, final))
            remove_prefix(f"{final}.shards", options)
            continue
        root = Path(f"{final}.shards")
        shards = sorted(str(p) for p in root.glob(f"*/*{SHARD_SUFFIX}")) if root.is_dir() else []
        if not shards:
            continue
        written.append(merge_shards(f, shards, final))
        shutil.rmtree(root, ignore_errors=True)
    return written
