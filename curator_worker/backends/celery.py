"""The ``celery`` backend: run a pipeline on a Celery cluster, or on an embedded one.

With ``CURATOR_BROKER_URL`` (or ``broker_url=``) set, the job goes to that cluster's
workers. Without, a private local cluster (Redis + prefork workers as subprocesses) is
started for the run and stopped after it. Either way the pipeline travels as a spec, so its
components must be importable classes. With ``track_metrics`` the job's per-index records
are copied into the pipeline's local metrics store when it ends.
"""

from __future__ import annotations

import logging
from typing import Any

from curator_worker.config import Settings
from curator_worker.contract.pipeline import Pipeline
from curator_worker.contract.spec import pipeline_to_spec, spec_hash
from curator_worker.embedded import cluster_for
from curator_worker.errors import CuratorError, JobFailedError
from curator_worker.metrics import safe_record_job_blobs, stage_names
from curator_worker.policy import BatchPolicy
from curator_worker.run import RunBackend, RunConfig, register_backend
from curator_worker.store import PARTIAL, SUCCEEDED

log = logging.getLogger(__name__)

#: What a failed job of the embedded cluster says instead of naming ``curator-jobs``.
EMBEDDED_HINT = (
    "The job ran on an embedded cluster, stopped with this run, so `curator-jobs` cannot show "
    "it afterwards: the error's `failures` holds every failed index. To keep jobs you can "
    "inspect, retry and report on later, set CURATOR_BROKER_URL and start workers with "
    "`curator-worker`."
)

_SETTING_KWARGS = ("broker_url", "result_backend", "job_store_url", "queue")
_JOB_KWARGS = ("index_timeout", "batch_time_limit", "index_memory_mb", "max_attempts",
               "retries", "retry_on", "retry_backoff", "metrics", "trace_memory")


def _job_options(kwargs: dict[str, Any], pipeline: Pipeline) -> dict[str, Any]:
    """Job options (policy, metrics) from the backend's keyword options.

    ``metrics`` and ``trace_memory`` default to the pipeline's ``track_metrics`` and
    ``track_metrics and track_memory``.
    """
    options = {k: kwargs[k] for k in _JOB_KWARGS if kwargs.get(k) is not None}
    policy = BatchPolicy.from_options(options).as_options()
    tracked = pipeline.track_metrics
    return {**policy, "metrics": bool(options.get("metrics", tracked)),
            "trace_memory": bool(options.get("trace_memory", tracked and pipeline.track_memory))}


def record_job_metrics(pipeline: Pipeline, store: Any, job_id: str) -> None:
    """Copy a job's per-index records from the job store into the pipeline's metrics store.

    The job store already holds each index's wall time, stage timings (one fast index in
    16, every slow one) and, with ``trace_memory``, peak memory; copying them lets
    :attr:`Pipeline.metrics` and ``resume`` work as on the local backends, also after an
    embedded cluster is gone. Each committed batch's blob is stored as it is, one row per
    batch (:meth:`~curator_worker.metrics_store.MetricsStore.record_job_blobs`), streamed
    from Redis a few at a time: no index is decoded until the metrics are read. Planned
    batches come first, then retry rounds in order, so a retry's record of an index
    supersedes the earlier one. Never raises: metrics must not fail a run.
    """
    if not pipeline.track_metrics:
        return
    try:
        stored = safe_record_job_blobs(pipeline, store.streamed_result_blobs(job_id),
                                       stage_names(pipeline))
        log.debug("job %s: %d batches' metrics copied", job_id, stored)
    except Exception as exc:  # noqa: BLE001 - a broken job store must not hide the outcome
        log.warning("job %s: could not copy its metrics: %s: %s", job_id,
                    type(exc).__name__, exc)


@register_backend
class CeleryBackend(RunBackend):
    """Batches of indices as Celery tasks in a chord whose callback gathers shards.

    Keyword options: ``broker_url``, ``result_backend``, ``job_store_url``, ``queue``,
    ``batch_size``, ``timeout`` (seconds to wait), ``on_error`` (``"collect"`` returns a
    partial job's results as a ``RunResult`` with its failures, as the local backends do;
    a job that failed as a whole still raises); and the job's policy: ``index_timeout``,
    ``batch_time_limit``, ``index_memory_mb``, ``max_attempts``, ``retries``, ``retry_on``
    (exception class names), ``retry_backoff``, ``metrics``, ``trace_memory``.
    """

    name = "celery"
    description = "Celery workers fed through Redis; embedded local cluster if none configured."
    requires = ("celery", "redis")

    #: How many of a cluster's most recent jobs ``resume`` looks through.
    resume_lookback = 100

    def completed_before(self, pipeline: Pipeline, config: RunConfig) -> dict[int, list[str]]:
        """On a configured cluster: indices earlier jobs of the same spec committed.

        Resume reads the job store too, so a run whose client stopped before the job ended
        (and so never copied its records locally) still counts. The embedded cluster keeps
        nothing between runs: there the local metrics store is the only record.
        """
        from producer.clients import clients_for

        kwargs = config.backend_options
        settings = Settings.from_env(**{k: kwargs.get(k) for k in _SETTING_KWARGS})
        if not settings.configured:
            return {}
        settings.require_cluster()
        _, store = clients_for(settings)
        wanted = spec_hash(pipeline_to_spec(pipeline))
        indices = list(range(len(pipeline))) if config.indices is None else config.indices
        done: dict[int, list[str]] = {}
        for job_id in reversed(store.list_jobs(limit=self.resume_lookback)):  # oldest first
            try:
                if spec_hash(store.record(job_id)["spec"]) != wanted:
                    continue
                paths = store.paths(job_id, indices)
            except CuratorError:  # expired meanwhile
                continue
            done.update((i, p) for i, p in zip(indices, paths, strict=True) if p is not None)
        return done

    def run(self, pipeline: Pipeline, config: RunConfig) -> list[list[str]]:
        """Submit the run as a job, wait for it, return the sink paths in order."""
        from producer.clients import clients_for
        from producer.submit import submit_job
        from producer.wait import wait_for_job

        kwargs = dict(config.backend_options)
        indices = list(range(len(pipeline))) if config.indices is None else config.indices
        n_jobs = config.resolved_n_jobs
        known = {*_SETTING_KWARGS, *_JOB_KWARGS, "batch_size", "timeout", "on_error"}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"Unknown celery backend option(s): {', '.join(sorted(unknown))}. "
                            f"Known options: {', '.join(sorted(known))}.")
        on_error = kwargs.pop("on_error", "raise")
        if on_error not in ("raise", "collect"):
            raise ValueError(f"on_error must be 'raise' or 'collect', got {on_error!r}.")
        spec = pipeline_to_spec(pipeline)
        base = Settings.from_env(**{k: kwargs.get(k) for k in _SETTING_KWARGS})
        with cluster_for(base, n_jobs) as (settings, cluster):
            job = submit_job(
                spec,
                settings,
                origin="run_pipeline",
                indices=indices,
                batch_size=kwargs.get("batch_size"),
                n_workers_hint=n_jobs if cluster is not None else None,
                options=_job_options(kwargs, pipeline),
            )
            _, store = clients_for(settings)
            try:
                status = wait_for_job(
                    store, job.job_id, settings=settings, progress=config.progress,
                    timeout=kwargs.get("timeout"),
                    watchdog=cluster.check_alive if cluster is not None else None,
                    embedded=cluster is not None,
                )
            finally:  # what finished is recorded even when waiting stops early
                record_job_metrics(pipeline, store, job.job_id)
            paths = store.paths(job.job_id, indices)
            failures = store.failures(job.job_id) if status.state != SUCCEEDED else {}
        if status.state == PARTIAL and on_error == "collect":
            from curator_worker.backends.run_result import RunResult

            return RunResult([p if p is not None else [] for p in paths], run_id=job.job_id,
                             errors=failures)
        if status.state != SUCCEEDED:
            raise JobFailedError(
                job.job_id, status.state,
                {i: f"{e['type']}: {e['message']}" for i, e in failures.items()},
                status.error or "", hint=EMBEDDED_HINT if cluster is not None else None,
            )
        return [p if p is not None else [] for p in paths]
