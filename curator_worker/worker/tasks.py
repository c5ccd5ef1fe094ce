"""The Celery tasks: ``curator.run_batch`` (chord header) and ``curator.gather`` (callback).

Both are thin: ``run_batch`` checks the batch was planned and hands it to a
:class:`~curator_worker.worker.attempt.BatchAttempt`, which runs, shards and commits it;
``gather`` merges the committed shards (:mod:`curator_worker.gather`). What a worker
process keeps between batches lives here too: its job store connection, its Redis broker
client (for leases) and each job's pipeline and policy, read once per process.

Messages reach these tasks only through :class:`curator_worker.trust.GuardedConsumer`,
which already dropped every message of another task, too large, or of another shape.

Header tasks never raise for item errors (they are recorded as data), so the chord always
reaches gather. They return only the batch key: small and deterministic.
"""

from __future__ import annotations

import gc
import json
import logging
from functools import lru_cache
from typing import Any

import redis
from celery.exceptions import Ignore, Reject
from celery.signals import worker_process_init

from curator_worker.compat.kombu import BrokerKeys
from curator_worker.config import DEFAULT_VISIBILITY_TIMEOUT, Settings
from curator_worker.contract.pipeline import Pipeline
from curator_worker.contract.spec import build_pipeline, spec_hash
from curator_worker.errors import BrokerUnavailableError, CuratorError
from curator_worker.gather import gather_job
from curator_worker.messaging import GATHER, RUN_BATCH
from curator_worker.policy import BatchPolicy
from curator_worker.store import JobStore
from curator_worker.store.attempts import UnplannedBatch
from curator_worker.trust import refuse, unknown_job, unplanned_batch
from curator_worker.worker import log_context
from curator_worker.worker import node as _node_signals  # noqa: F401 - connects them
from curator_worker.worker.app import app
from curator_worker.worker.attempt import BatchAttempt, WorkerJob
from curator_worker.worker.lease import LeaseRenewal

log = logging.getLogger(__name__)

_store: JobStore | None = None


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


def job_for_batches(job_id: str) -> WorkerJob:
    """The pipeline, spec hash, policy and metrics switches of ``job_id``, from this
    process's caches; :class:`~curator_worker.errors.SpecError` if the pipeline cannot be
    built here."""
    pipeline = pipeline_for_job(job_id)
    _, digest, policy, metrics = _job_context(job_id)
    return WorkerJob(pipeline, digest, policy, metrics)


def process_batch(
    store: JobStore, job_id: str, batch_key: str, indices: list[int], node: str = ""
) -> str:
    """Run, shard and commit one batch; exactly-once whatever the number of deliveries
    (:class:`~curator_worker.worker.attempt.BatchAttempt`). ``node`` is the Celery worker
    node name, stored with the commit. Returns the batch key."""
    return BatchAttempt(store, job_id, batch_key, indices, node, job_for_batches,
                        _lease(job_id, batch_key)).run()


@app.task(name=RUN_BATCH, bind=True, ignore_result=True)
def run_batch(self: Any, job_id: str, batch_key: str, indices: list[int]) -> str:
    """Chord header: run one batch of a job. Returns the batch key.

    Its outcome lives in the job store, so Celery keeps no result of its own for it (no
    result key, no "started" state): the chord still counts it and hands ``gather`` the
    batch keys.

    A batch its job did not plan (checked as the batch begins, in the same round trip:
    :meth:`~curator_worker.store.JobStore.begin_batch`; the log line says why,
    :func:`~curator_worker.trust.unplanned_batch`) is dropped with one log line before
    anything is written: not run, not counted.

    If the job store stays unreachable (beyond the client's retries), the message is
    rejected and requeued instead of acknowledged, so the batch is not lost.
    """
    with log_context.batch_context(job_id, batch_key):
        try:
            store = worker_store()
            try:
                return process_batch(store, job_id, batch_key, indices,
                                     self.request.hostname or "")
            except UnplannedBatch as exc:
                problem = unplanned_batch(store, job_id, batch_key, indices) or str(exc)
                refuse(RUN_BATCH, self.request.id, problem)
                raise Ignore() from None  # acknowledged; no result, no chord count
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
