"""One delivery of one batch, owned by one object: :class:`BatchAttempt`.

An attempt follows one path a reader can trace, each step a method::

    begin      the job store counts the attempt; a committed batch, a cancelled or
               ended job stops here
    load       the job's pipeline and policy (cached per process); a pipeline that
               cannot be built fails the batch's indices as ``systemic``
    skip       after worker deaths: the indices to blame and skip (crash attribution)
    execute    run the indices (:func:`curator_worker.batch.execute_batch`), reporting
               progress, renewing the lease, watching for cancellation
    shards     write the stateful filters' shards (:mod:`curator_worker.shards`)
    commit     one Lua script commits results and shards exactly once
    gather     the last batch of a job gathers right away

Exactly once whatever the number of deliveries: a second delivery of a committed batch
stops at ``begin``; a duplicate running beside a live attempt (a visibility timeout) loses
at ``commit`` and removes its shards.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from curator_worker.batch import BatchOutcome, execute_batch
from curator_worker.contract.pipeline import Pipeline
from curator_worker.contract.spec import UnknownClassError
from curator_worker.errors import CuratorError
from curator_worker.gather import gather_job, remove_abandoned_temps
from curator_worker.outcome import HOSTNAME, IndexResult, error_record
from curator_worker.policy import BatchPolicy
from curator_worker.shards import discard_losing_shards, write_shards
from curator_worker.store import (
    ALREADY_COMMITTED,
    CANCELLED,
    COMMITTED_LAST,
    FINAL_STATES,
    SUCCEEDED,
    JobStore,
    batch_results,
)
from curator_worker.store.attempts import AttemptMark, BatchStart
from curator_worker.store.keys import plan_entry
from curator_worker.worker import log_context
from curator_worker.worker.lease import LeaseRenewal

log = logging.getLogger(__name__)

#: Deaths of a worker while one index was running before that index is blamed and skipped.
BLAME_THRESHOLD = 2
#: Seconds between live progress reports of a running batch (and checks for cancellation).
PROGRESS_INTERVAL = 0.5
#: When this worker process imported its code (workers import components once).
_IMPORTED_AT = time.time()


@dataclass(frozen=True)
class WorkerJob:
    """What a worker process needs of a job to run its batches (read once per process).

    Attributes
    ----------
    pipeline : Pipeline
        Built from the job's spec.
    digest : str
        The spec's hash (its learned per-index cost is kept under it).
    policy : BatchPolicy
        Timeouts, retries, memory limit.
    metrics : dict[str, bool]
        ``timings`` and ``trace_memory``: what :func:`execute_batch` measures.
    """

    pipeline: Pipeline
    digest: str
    policy: BatchPolicy
    metrics: dict[str, bool]


class BatchAttempt:
    """One delivery of one batch: begin → skip → execute → shards → commit → gather.

    Parameters
    ----------
    store : JobStore
        The job store (this process's connection).
    job_id, batch_key : str
        The batch.
    indices : list[int]
        Its indices, as planned.
    node : str
        The Celery worker node name, stored with the commit.
    load_job : Callable[[str], WorkerJob]
        The job's pipeline and policy (the worker caches them per process); raises
        :class:`CuratorError` when the pipeline cannot be built here.
    lease : LeaseRenewal, optional
        Renews the batch's message in a Redis broker after each index.
    """

    def __init__(self, store: JobStore, job_id: str, batch_key: str, indices: list[int],
                 node: str, load_job: Callable[[str], WorkerJob],
                 lease: LeaseRenewal | None = None) -> None:
        self.store, self.job_id, self.batch_key = store, job_id, batch_key
        self.indices, self.node = indices, node
        self.load_job, self.lease = load_job, lease
        self.attempt = 0
        #: a delivery beside a live attempt (visibility timeout): it counts no death
        self.duplicate = False
        #: a redelivery after a death records the index it runs, so the next death is
        #: blamed on that index (crash attribution)
        self.track_running_index = False
        self.started: float | None = None  # when execution began (epoch seconds)
        self.mark: AttemptMark | None = None

    def run(self) -> str:
        """Run the attempt to its end; returns the batch key (the chord's result)."""
        with self.store.attempt_mark(self.job_id, self.batch_key) as mark:
            self.mark = mark
            start = self.begin(mark)
            if start is None:
                return self.batch_key
            job = self.load(start)
            if job is None:
                return self.batch_key
            skip = self.skipped_indices(job.policy)
            outcome = self.execute(job, skip)
            if outcome.stopped_early:
                log.info("job %s cancelled; batch %s stops uncommitted", self.job_id,
                         self.batch_key)
                return self.batch_key
            shards = self.write_shards(job.pipeline, outcome)
            self.commit(job, outcome, shards)
        return self.batch_key

    # -- begin ---------------------------------------------------------------------------

    def begin(self, mark: AttemptMark) -> BatchStart | None:
        """Check the plan and count this attempt; ``None`` when the batch must not run
        (committed already, the job cancelled or ended).

        Raises
        ------
        UnplannedBatch
            When the job did not plan this batch with these indices (nothing written).
        """
        job_id, batch_key = self.job_id, self.batch_key
        start = self.store.begin_batch(job_id, batch_key, f"{self.node or HOSTNAME}/{os.getpid()}",
                                       plan=plan_entry(self.indices), mark=mark)
        if start is None:
            log.info("job %s batch %s already committed; skipping redelivery", job_id, batch_key)
            return None
        self.attempt = start.attempt
        self.duplicate = self.attempt > 1 and mark.another_alive()
        self.track_running_index = self.attempt > 1 and not self.duplicate
        if start.marked:
            mark.keep_alive()
        else:
            mark.start()
        if self.duplicate:
            log.info("job %s batch %s: delivered again while attempt %d runs (visibility "
                     "timeout); not a worker death", job_id, batch_key, self.attempt - 1)
        if start.state == CANCELLED:
            return None
        if start.state in FINAL_STATES:  # e.g. a failed publish ended it: resume runs it later
            log.warning("job %s batch %s: the job ended %s; batch skipped, not committed",
                        job_id, batch_key, start.state)
            return None
        return start

    # -- load ----------------------------------------------------------------------------

    def load(self, start: BatchStart) -> WorkerJob | None:
        """The job; ``None`` when its pipeline cannot be built here, after committing the
        batch's indices as ``systemic`` failures (with a hint when the worker's code is
        older than the spec)."""
        try:
            return self.load_job(self.job_id)
        except CuratorError as exc:
            hint = stale_code_hint(exc)
            message = f"cannot build the pipeline on worker {HOSTNAME}: {exc}{hint}"
            log.error("job %s: %s", self.job_id, message)
            self.store.record_error(self.job_id, message)
            failure = error_record(exc, self.attempt, kind="systemic")
            failure["message"] = f"{failure.get('message') or ''}{hint}"
            results = [IndexResult(i, error=failure) for i in self.indices]
            self.store.commit_batch(self.job_id, self.batch_key, batch_results.encode(results),
                                    self.commit_record([], {}))
            return None

    # -- skip ----------------------------------------------------------------------------

    def skipped_indices(self, policy: BatchPolicy) -> dict[int, dict[str, Any]]:
        """Indices this attempt must not run, with the error to record for each.

        A delivery whose previous attempt died counts a death and blames the index that
        attempt was running; a duplicate of a live attempt counts nothing. An index
        running at :data:`BLAME_THRESHOLD` deaths is skipped and recorded as ``crash`` (or
        ``timeout`` when the watchdog killed it). After ``max_attempts`` deliveries with
        deaths, every index blamed once is skipped (each further death pins one more
        index, so the batch ends); a death with no index to blame then gives up on the
        whole batch.
        """
        store, job_id, batch_key, attempt = self.store, self.job_id, self.batch_key, self.attempt
        if attempt == 1:
            return {}
        if self.duplicate:
            died_at, deaths = None, store.deaths(job_id, batch_key)
        else:
            died_at = store.take_current(job_id, batch_key)
            deaths = store.record_death(job_id, batch_key)
            if died_at is not None:
                store.blame(job_id, batch_key, died_at, "crash")
        give_up = deaths + 1 > policy.max_attempts
        if give_up and died_at is None and not self.duplicate:
            reason = RuntimeError(
                f"batch {batch_key} was delivered {attempt - 1} times and its worker died "
                f"every time outside any index; giving up on its indices "
                f"(max_attempts={policy.max_attempts})"
            )
            failure = error_record(reason, attempt, kind="crash")
            return {i: failure for i in self.indices}
        skip = {}
        for index, entry in store.blamed(job_id, batch_key).items():
            if entry["count"] >= BLAME_THRESHOLD or (give_up and entry["count"] >= 1):
                kind = entry.get("kind", "crash")
                what = ("was stuck past its timeout in code that ignores signals"
                        if kind == "timeout" else "was running each time its worker process died")
                reason = RuntimeError(f"index {index} {what} ({entry['count']} times); skipped")
                skip[index] = error_record(reason, attempt, kind=kind)
        return skip

    # -- execute -------------------------------------------------------------------------

    def execute(self, job: WorkerJob, skip: dict[int, dict[str, Any]]) -> BatchOutcome:
        """Run the batch's indices (those in ``skip`` are recorded, not run)."""
        log.info("job %s batch %s: %d indices (attempt %d)", self.job_id, self.batch_key,
                 len(self.indices), self.attempt)
        self.started = time.time()
        progress = InflightProgress(self.store, self.job_id, self.batch_key, self.lease)
        return execute_batch(
            job.pipeline, self.indices, attempt=self.attempt, policy=job.policy, skip=skip,
            should_stop=progress.cancelled,
            on_start=self.starting if self.track_running_index else log_context.set_index,
            on_stuck=self.stuck, on_index=progress, **job.metrics,
        )

    def starting(self, index: int) -> None:
        """Before each index: log context, and (redelivered batches) the running index."""
        log_context.set_index(index)
        if self.track_running_index:
            self.store.set_current(self.job_id, self.batch_key, index)

    def stuck(self, index: int, kind: str) -> None:
        """The watchdog gave up on ``index``: blame it enough to be skipped next time."""
        self.store.blame(self.job_id, self.batch_key, index, kind, count=BLAME_THRESHOLD)

    # -- shards --------------------------------------------------------------------------

    def write_shards(self, pipeline: Pipeline, outcome: BatchOutcome) -> dict[str, str]:
        """The stateful filters' shards of this batch, written temp-then-commit.

        A full or failing disk (``OSError``) is recorded once, as what it is, instead of
        letting the task fail (which looked like a worker death and ran the batch again
        and again): its succeeded indices become failures of kind ``io`` (their share of
        the merged results is lost) and the job records the error, so it ends ``failed``
        saying what to do; ``curator-jobs retry`` re-runs them.
        """
        if any(r.error is not None for r in outcome.results):
            remove_abandoned_temps(pipeline, own=True)  # a failed write may leave its temp
        try:
            return write_shards(pipeline, outcome, self.job_id, self.batch_key)
        except OSError as exc:
            message = (f"writing the filter shards of batch {self.batch_key} failed on "
                       f"{HOSTNAME}: {type(exc).__name__}: {exc}. Free space or fix the "
                       f"storage, then run `curator-jobs retry {self.job_id}`")
            log.error("job %s: %s", self.job_id, message)
            self.store.record_error(self.job_id, message)
            for result in outcome.results:
                if result.error is None:
                    result.error = error_record(exc, self.attempt, kind="io")
                    result.paths = None
            return {}

    # -- commit and gather -----------------------------------------------------------------

    def commit(self, job: WorkerJob, outcome: BatchOutcome, shards: dict[str, str]) -> None:
        """Commit results and shards once; the job's last commit gathers right away, a
        losing duplicate removes its shards."""
        store, job_id, batch_key = self.store, self.job_id, self.batch_key
        encoded = batch_results.encode(outcome.results)
        mark = self.mark
        if mark is not None:
            mark.stop_renewing()  # the commit releases it
        committed = store.commit_batch(job_id, batch_key, encoded,
                                       self.commit_record(outcome.results, shards), mark=mark)
        if committed == COMMITTED_LAST:
            self.gather(job)
        elif committed == ALREADY_COMMITTED:
            log.info("job %s batch %s was committed by another attempt", job_id, batch_key)
            discard_losing_shards(shards.values(), merged=store.state(job_id) == SUCCEEDED)
        if self.track_running_index:
            store.set_current(job_id, batch_key, None)

    def gather(self, job: WorkerJob) -> None:
        """Gather right after the job's last commit (the chord callback comes later, a
        no-op). A failure here is left to the chord callback, which gathers again."""
        try:
            gather_job(self.store, self.job_id, job.pipeline, job.digest)
        except Exception:  # noqa: BLE001 - the batch is committed; the chord gathers again
            log.warning("job %s: gathering after the last batch failed; the chord callback "
                        "gathers again", self.job_id, exc_info=True)

    def commit_record(self, results: list[IndexResult], shards: dict[str, str]) -> dict[str, Any]:
        """What the job store keeps of the attempt beside its results: where and when it
        ran, its shards and its stage totals."""
        return {
            "shards": shards,
            "node": self.node,
            "host": HOSTNAME,
            "pid": os.getpid(),
            "attempt": self.attempt,
            "started": round(self.started or time.time(), 4),
            "finished": round(time.time(), 4),
            "n": len(results),
            "seconds": round(sum(r.seconds for r in results), 6),
            **stage_totals(results),
        }


class InflightProgress:
    """After each index, at most every :data:`PROGRESS_INTERVAL`: reports a running batch's
    processed count, renews its lease (:mod:`curator_worker.worker.lease`) and asks whether
    its job was cancelled (:meth:`cancelled`, checked before each index). In between, an
    index costs a counter and a clock read."""

    def __init__(self, store: JobStore, job_id: str, batch_key: str,
                 lease: LeaseRenewal | None = None) -> None:
        self.store, self.job_id, self.batch_key = store, job_id, batch_key
        self.lease = lease
        self.count = 0
        self.due = time.monotonic() + PROGRESS_INTERVAL
        self.stop = False

    def __call__(self, result: IndexResult) -> None:
        self.count += 1
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + PROGRESS_INTERVAL
        if self.lease is not None:
            self.lease()
        self.store.report_inflight(self.job_id, self.batch_key, self.count)
        self.stop = self.store.state(self.job_id) == CANCELLED

    def cancelled(self) -> bool:
        """Whether the job was cancelled, as last seen after an index."""
        return self.stop


def stage_totals(results: list[IndexResult]) -> dict[str, Any]:
    """Seconds per stage for a batch's succeeded indices, and how many were timed.

    When stage timings were sampled (fast indices, see :func:`execute_batch`), the totals
    of the timed indices are scaled to all succeeded ones: an estimate, marked by
    ``stages_timed`` < ``stages_of``.
    """
    totals: dict[str, float] = {}
    timed = succeeded = 0
    for result in results:
        if result.error is None:
            succeeded += 1
        if result.stages:
            timed += 1
            for stage, seconds in result.stages.items():
                totals[stage] = totals.get(stage, 0.0) + seconds
    scale = succeeded / timed if timed and succeeded > timed else 1.0
    return {"stages": {k: round(v * scale, 6) for k, v in totals.items()},
            "stages_timed": timed, "stages_of": succeeded}


def stale_code_hint(exc: Exception) -> str:
    """A hint that the worker runs older code, for a spec naming a class it lacks."""
    if not isinstance(exc, UnknownClassError):
        return ""
    changed = ""
    try:
        if exc.module_file and os.path.getmtime(exc.module_file) > _IMPORTED_AT:
            changed = f" ({exc.module_file} changed after this worker started)"
    except OSError:
        pass
    return (f" Workers import {exc.module} once, when they start{changed}: if '{exc.name}' "
            "was added since, restart the workers (curator-worker) so they run the new code.")
