"""The Celery tasks: ``curator.run_batch`` (chord header) and ``curator.gather`` (callback).

A batch task follows one path a reader can trace::

    planned? (one lookup; else one log line, dropped) -> load job (cached)
    -> skip if committed -> build pipeline (cached per job)
    -> execute_batch -> write_shards -> commit (one Lua script) -> return the batch key

Messages reach these tasks only through :class:`curator_worker.trust.GuardedConsumer`,
which already dropped every message of another task, too large, or of another shape.

Header tasks never raise for item errors (they are recorded as data), so the chord always
reaches gather. They return only the batch key: small and deterministic.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from functools import lru_cache, partial
from typing import Any

import redis
from celery.exceptions import Ignore, Reject
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    heartbeat_sent,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from curator_worker import log_context
from curator_worker.app import app
from curator_worker.batch import HOSTNAME, IndexResult, error_record, execute_batch
from curator_worker.compat.celery import worker_node
from curator_worker.compat.kombu import BrokerKeys
from curator_worker.config import DEFAULT_VISIBILITY_TIMEOUT, Settings
from curator_worker.errors import BrokerUnavailableError, CuratorError
from curator_worker.gather import gather_job, remove_abandoned_temps
from curator_worker.lease import LeaseRenewal
from curator_worker.messaging import GATHER, RUN_BATCH
from curator_worker.pipeline import Pipeline
from curator_worker.policy import BatchPolicy
from curator_worker.shards import discard_losing_shards, write_shards
from curator_worker.spec import UnknownClassError, build_pipeline, spec_hash
from curator_worker.store import (
    ALREADY_COMMITTED,
    CANCELLED,
    COMMITTED_LAST,
    FINAL_STATES,
    SUCCEEDED,
    JobStore,
    batch_results,
    connect,
)
from curator_worker.store.attempts import AttemptMark
from curator_worker.store.nodes import announce_node, forget_node
from curator_worker.trust import refuse, unknown_job, unplanned_batch

log = logging.getLogger(__name__)

_store: JobStore | None = None


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_with_context(logger: logging.Logger, **_: Any) -> None:
    """Every worker log line carries the job, batch and index being processed."""
    log_context.install(logger)


_node: dict[str, Any] = {}


@worker_ready.connect
def _node_ready(sender: Any, **_: Any) -> None:
    """Announce this node (name, pool size, queues) so producers size batches for it."""
    node = worker_node(sender)
    _node.update(name=node.name, concurrency=node.concurrency, queues=node.queues,
                 task_events=node.task_events)
    _heartbeat()


@heartbeat_sent.connect
def _heartbeat(**_: Any) -> None:
    """Refresh this node's entry in the live-node registry (every worker heartbeat)."""
    if not _node:
        return
    try:
        announce_node(_node_store().client, _node["name"], _node["concurrency"], _node["queues"],
                      _node["task_events"])
    except Exception:  # noqa: BLE001 - sizing hints must never disturb the worker
        log.debug("could not announce node", exc_info=True)


@worker_shutdown.connect
def _node_gone(**_: Any) -> None:
    if _node:
        try:
            forget_node(_node_store().client, _node["name"])
        except Exception:  # noqa: BLE001
            log.debug("could not remove node", exc_info=True)


@lru_cache(maxsize=1)
def _node_store() -> JobStore:
    """The worker main process's own job store connection (heartbeats only).

    It fails fast, without retries: heartbeats run in the node's event loop, and a client
    riding out an outage there froze the whole node (no reconnecting, no pool upkeep) for
    as long as the broker was down.
    """
    settings = Settings.from_env()
    url = settings.effective_job_store_url or ""
    return JobStore(connect(url, timeout=2.0, retries=0), ttl=settings.job_ttl)


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    """Drop connections inherited from the parent: each prefork child opens its own.

    Everything the child inherited (Celery, kombu, our modules) is moved out of the cyclic
    garbage collector's reach (``gc.freeze``): full collections, which the many small
    objects of a batch of fast indices trigger, then scan only what batches allocate.
    """
    global _store
    gc.freeze()
    _store = None
    _job_context.cache_clear()
    pipeline_for_job.cache_clear()
    _broker_client.cache_clear()
    _node.clear()  # heartbeats belong to the main process


def worker_store() -> JobStore:
    """This process's job store connection (created on first use, after fork)."""
    global _store
    if _store is None:
        settings = Settings.from_env()
        settings.require_cluster()
        _store = JobStore.from_url(settings.effective_job_store_url, ttl=settings.job_ttl)
    return _store


@lru_cache(maxsize=1)
def _broker_client() -> tuple[redis.Redis | None, float, str]:
    """This process's client of a Redis broker (None for other brokers, or when kombu
    prefixes its keys), the visibility timeout and kombu's unacknowledged-index key."""
    url = str(app.conf.broker_url or "")
    options = dict(app.conf.broker_transport_options or {})
    timeout = float(options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT))
    index_key = BrokerKeys.from_options(options).unacked_index
    if not url.startswith(("redis://", "rediss://")) or options.get("global_keyprefix"):
        return None, timeout, index_key
    return redis.Redis.from_url(url, socket_timeout=5.0), timeout, index_key


def _lease(job_id: str, batch_key: str) -> LeaseRenewal | None:
    """The lease renewal of a batch about to run, when the broker is Redis."""
    client, timeout, index_key = _broker_client()
    if client is None:
        return None
    expires = app.conf.result_expires
    tags_ttl = int(expires.total_seconds() if hasattr(expires, "total_seconds")
                   else expires or 0)
    return LeaseRenewal(client, job_id, batch_key, timeout, index_key, tags_ttl)


@lru_cache(maxsize=64)
def _job_context(job_id: str) -> tuple[str, str, BatchPolicy, dict[str, bool]]:
    """A job's spec (JSON), hash, batch policy and metrics switches, read once per process."""
    record = worker_store().record(job_id)
    spec_json = json.dumps(record["spec"], sort_keys=True)
    options = record["options"]
    switches = {"timings": bool(options.get("metrics", True)),
                "trace_memory": bool(options.get("trace_memory", False))}
    return spec_json, spec_hash(record["spec"]), BatchPolicy.from_options(options), switches


@lru_cache(maxsize=16)
def pipeline_for_job(job_id: str) -> Pipeline:
    """The pipeline of ``job_id``, built once per process; :class:`SpecError` if it cannot be.

    Cached per job, not per spec: components may read the world when they are built (a
    ``FileGlob`` lists its files then), so a later job with the same spec gets a fresh
    pipeline, as its producer planned it.
    """
    spec_json, digest, _, _ = _job_context(job_id)
    return build_pipeline(json.loads(spec_json), f"spec {digest}")


#: When this worker process imported its code (workers import components once).
_IMPORTED_AT = time.time()


def _stale_code_hint(exc: Exception) -> str:
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


#: Deaths of a worker while one index was running before that index is blamed and skipped.
BLAME_THRESHOLD = 2
#: Seconds between checks for cancellation while a batch runs.
CANCEL_CHECK_INTERVAL = 0.5
#: Seconds between live progress reports of a running batch.
PROGRESS_INTERVAL = 0.5


def process_batch(
    store: JobStore, job_id: str, batch_key: str, indices: list[int], node: str = ""
) -> str:
    """Run, shard and commit one batch; exactly-once whatever the number of deliveries.

    ``node`` is the Celery worker node name, stored with the commit. A redelivered batch
    whose previous attempt died (not a duplicate of a live one: :class:`AttemptMark`)
    tracks the running index in the job store; an index that was running at
    :data:`BLAME_THRESHOLD` deaths is skipped and recorded as ``crash`` (or ``timeout``
    when the watchdog killed it). After ``max_attempts`` deliveries with deaths, every
    index that was running at a death is skipped, so a batch that always kills its worker
    cannot loop forever; only when a death cannot be pinned on an index (the worker died
    outside one) are the batch's indices all recorded failed.
    """
    with store.attempt_mark(job_id, batch_key) as mark:
        return _process_batch(store, job_id, batch_key, indices, node, mark)


def _process_batch(
    store: JobStore, job_id: str, batch_key: str, indices: list[int], node: str,
    mark: AttemptMark,
) -> str:
    start = store.begin_batch(job_id, batch_key, f"{node or HOSTNAME}/{os.getpid()}")
    if start is None:
        log.info("job %s batch %s already committed; skipping redelivery", job_id, batch_key)
        return batch_key
    attempt = start.attempt
    duplicate = attempt > 1 and mark.another_alive()
    mark.start()
    if duplicate:
        log.info("job %s batch %s: delivered again while attempt %d runs (visibility "
                 "timeout); not a worker death", job_id, batch_key, attempt - 1)
    if start.state == CANCELLED:
        return batch_key
    if start.state in FINAL_STATES:  # e.g. a failed publish ended it: resume runs it later
        log.warning("job %s batch %s: the job ended %s; batch skipped, not committed",
                    job_id, batch_key, start.state)
        return batch_key
    try:
        pipeline = pipeline_for_job(job_id)
        _, _, policy, metrics = _job_context(job_id)
    except CuratorError as exc:
        hint = _stale_code_hint(exc)
        message = f"cannot build the pipeline on worker {HOSTNAME}: {exc}{hint}"
        log.error("job %s: %s", job_id, message)
        store.record_error(job_id, message)
        failure = error_record(exc, attempt, kind="systemic")
        failure["message"] = f"{failure.get('message') or ''}{hint}"
        results = [IndexResult(i, error=failure) for i in indices]
        store.commit_batch(
            job_id, batch_key, batch_results.encode(results), _commit_record([], attempt, {}, node)
        )
        return batch_key

    skip = _skipped_indices(store, job_id, batch_key, indices, attempt, policy, duplicate)
    # a redelivery after a worker died records the index it runs, so the next death is
    # blamed on that index (crash attribution)
    track_running_index = attempt > 1 and not duplicate
    last_check = [time.monotonic()]

    def cancelled() -> bool:
        now = time.monotonic()
        if now - last_check[0] < CANCEL_CHECK_INTERVAL:
            return False
        last_check[0] = now
        return store.state(job_id) == CANCELLED

    def stuck(index: int, kind: str) -> None:
        store.blame(job_id, batch_key, index, kind, count=BLAME_THRESHOLD)

    log.info("job %s batch %s: %d indices (attempt %d)", job_id, batch_key, len(indices), attempt)
    started = time.time()
    progress = _InflightProgress(store, job_id, batch_key, _lease(job_id, batch_key))
    outcome = execute_batch(
        pipeline, indices, attempt=attempt, policy=policy, skip=skip, should_stop=cancelled,
        on_start=partial(_starting, store, job_id, batch_key, track_running_index),
        on_stuck=stuck, on_index=progress, **metrics,
    )
    if outcome.stopped_early:
        log.info("job %s cancelled; batch %s stops uncommitted", job_id, batch_key)
        return batch_key
    if any(r.error is not None for r in outcome.results):
        remove_abandoned_temps(pipeline, own=True)  # a failed write may leave its temp file
    try:
        shards = write_shards(pipeline, outcome, job_id, batch_key)
    except OSError as exc:  # a full or failing disk: the batch's filter state is lost
        _fail_on_io_error(store, job_id, batch_key, outcome.results, attempt, exc)
        shards = {}
    record = _commit_record(outcome.results, attempt, shards, node, started)
    committed = store.commit_batch(job_id, batch_key, batch_results.encode(outcome.results),
                                   record)
    if committed == COMMITTED_LAST:
        _gather_now(store, job_id, pipeline)
    elif committed == ALREADY_COMMITTED:
        log.info("job %s batch %s was committed by another attempt", job_id, batch_key)
        discard_losing_shards(shards.values(), merged=store.state(job_id) == SUCCEEDED)
    if track_running_index:
        store.set_current(job_id, batch_key, None)
    return batch_key


def _fail_on_io_error(
    store: JobStore, job_id: str, batch_key: str, results: list[IndexResult], attempt: int,
    exc: OSError,
) -> None:
    """Writing the batch's filter shards failed (e.g. ``ENOSPC``): record it once, as what
    it is, instead of letting the task fail (which looked like a worker death and ran the
    batch again and again). Its succeeded indices become failures of kind ``io`` (their
    share of the merged results is lost) and the job records the error, so it ends
    ``failed`` saying what to do; ``curator-jobs retry`` re-runs them."""
    message = (f"writing the filter shards of batch {batch_key} failed on {HOSTNAME}: "
               f"{type(exc).__name__}: {exc}. Free space or fix the storage, then run "
               f"`curator-jobs retry {job_id}`")
    log.error("job %s: %s", job_id, message)
    store.record_error(job_id, message)
    for result in results:
        if result.error is None:
            result.error = error_record(exc, attempt, kind="io")
            result.paths = None


def _gather_now(store: JobStore, job_id: str, pipeline: Pipeline) -> None:
    """Gather right after the job's last commit (the chord callback comes later, a no-op).

    A failure here is left to the chord callback, which gathers again.
    """
    try:
        gather_job(store, job_id, pipeline, _job_context(job_id)[1])
    except Exception:  # noqa: BLE001 - the batch is committed; gather is retried by the chord
        log.warning("job %s: gathering after the last batch failed; the chord callback "
                    "gathers again", job_id, exc_info=True)


class _InflightProgress:
    """After each index: reports a running batch's processed count, at most every
    :data:`PROGRESS_INTERVAL`, and renews its lease (:mod:`curator_worker.lease`)."""

    def __init__(self, store: JobStore, job_id: str, batch_key: str,
                 lease: LeaseRenewal | None = None) -> None:
        self.store, self.job_id, self.batch_key = store, job_id, batch_key
        self.lease = lease
        self.count = 0
        self.last = time.monotonic()

    def __call__(self, result: IndexResult) -> None:
        if self.lease is not None:
            self.lease()
        self.count += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.store.report_inflight(self.job_id, self.batch_key, self.count)


def _starting(store: JobStore, job_id: str, batch_key: str, track: bool, index: int) -> None:
    """Before each index: log context, and (redelivered batches) the running index."""
    log_context.set_index(index)
    if track:
        store.set_current(job_id, batch_key, index)


def _skipped_indices(
    store: JobStore, job_id: str, batch_key: str, indices: list[int], attempt: int,
    policy: BatchPolicy, duplicate: bool = False,
) -> dict[int, dict[str, Any]]:
    """Indices this attempt must not run, with the error to record for each.

    A delivery whose previous attempt died counts a death and blames the index that
    attempt was running; a duplicate of a live attempt counts nothing. After
    ``max_attempts`` deliveries with deaths, every index blamed once is skipped (each
    further death pins one more index, so the batch ends); a death with no index to blame
    then gives up on the whole batch.
    """
    if attempt == 1:
        return {}
    if duplicate:
        died_at, deaths = None, store.deaths(job_id, batch_key)
    else:
        died_at, deaths = store.take_current(job_id, batch_key), store.record_death(
            job_id, batch_key)
        if died_at is not None:
            store.blame(job_id, batch_key, died_at, "crash")
    give_up = deaths + 1 > policy.max_attempts
    if give_up and died_at is None and not duplicate:
        reason = RuntimeError(
            f"batch {batch_key} was delivered {attempt - 1} times and its worker died every "
            f"time outside any index; giving up on its indices "
            f"(max_attempts={policy.max_attempts})"
        )
        failure = error_record(reason, attempt, kind="crash")
        return {i: failure for i in indices}
    skip = {}
    for index, entry in store.blamed(job_id, batch_key).items():
        if entry["count"] >= BLAME_THRESHOLD or (give_up and entry["count"] >= 1):
            kind = entry.get("kind", "crash")
            what = ("was stuck past its timeout in code that ignores signals"
                    if kind == "timeout" else "was running each time its worker process died")
            reason = RuntimeError(f"index {index} {what} ({entry['count']} times); skipped")
            skip[index] = error_record(reason, attempt, kind=kind)
    return skip


def _commit_record(
    results: list[IndexResult], attempt: int, shards: dict[str, str], node: str,
    started: float | None = None,
) -> dict[str, Any]:
    return {
        "shards": shards,
        "node": node,
        "host": HOSTNAME,
        "pid": os.getpid(),
        "attempt": attempt,
        "started": round(started or time.time(), 4),
        "finished": round(time.time(), 4),
        "n": len(results),
        "seconds": round(sum(r.seconds for r in results), 6),
        **_stage_totals(results),
    }


def _stage_totals(results: list[IndexResult]) -> dict[str, Any]:
    """Seconds per stage for the batch's succeeded indices, and how many were timed.

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


@app.task(name=RUN_BATCH, bind=True, ignore_result=True)
def run_batch(self: Any, job_id: str, batch_key: str, indices: list[int]) -> str:
    """Chord header: run one batch of a job. Returns the batch key.

    Its outcome lives in the job store, so Celery keeps no result of its own for it (no
    result key, no "started" state): the chord still counts it and hands ``gather`` the
    batch keys.

    A batch its job did not plan (:func:`~curator_worker.trust.unplanned_batch`) is
    dropped with one log line before anything is written: not run, not counted.

    If the job store stays unreachable (beyond the client's retries), the message is
    rejected and requeued instead of acknowledged, so the batch is not lost.
    """
    with log_context.batch_context(job_id, batch_key):
        try:
            store = worker_store()
            problem = unplanned_batch(store, job_id, batch_key, indices)
            if problem:
                refuse(RUN_BATCH, self.request.id, problem)
                raise Ignore()  # acknowledged; no result, no chord count
            return process_batch(store, job_id, batch_key, indices, self.request.hostname or "")
        except (redis.ConnectionError, redis.TimeoutError, BrokerUnavailableError) as exc:
            log.error("job store unreachable (%s); requeueing batch %s", exc, batch_key)
            raise Reject(exc, requeue=True) from None


@app.task(name=GATHER, bind=True, autoretry_for=(redis.ConnectionError, redis.TimeoutError),
          retry_backoff=True, max_retries=10)
def gather(self: Any, batch_keys: list[str] | None, job_id: str) -> str:
    """Chord callback: merge committed shards and finish the job. Returns its state.

    A job that does not finish yet (some batch not committed) is left as it is.
    """
    store = worker_store()
    problem = unknown_job(store, job_id)
    if problem:
        refuse(GATHER, self.request.id, problem)
        raise Ignore()
    try:
        pipeline: Pipeline | None = pipeline_for_job(job_id)
    except CuratorError as exc:
        store.record_error(job_id, f"cannot build the pipeline for gather: {exc}")
        pipeline = None
    digest = _job_context(job_id)[1] if pipeline is not None else None
    return gather_job(store, job_id, pipeline, digest)
