"""Submitting a job: validate the spec, plan batches, write the job, send the chord.

Everything that can be wrong with the user's input is checked before the first message
is published: the spec is built here exactly as a worker will build it, the index list and
partitions are planned, and the job store and broker are reached (≤ 5 s) before anything is
written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from celery import Celery

from curator_worker.config import Settings, is_redis_url, redact_url
from curator_worker.contract.indices import check_indices, parse_indices
from curator_worker.contract.pipeline import Pipeline
from curator_worker.contract.planning import (
    Batch,
    IndexCost,
    balanced_batch_sizes,
    plan_balanced_batches,
    plan_batches,
    plan_independent_batches,
    plan_sized_batches,
)
from curator_worker.contract.spec import build_pipeline, spec_hash
from curator_worker.errors import BrokerUnavailableError, IndexSelectionError, SpecError
from curator_worker.store import JobStore, new_job_id
from curator_worker.store.nodes import live_nodes
from curator_worker.store.status import FAILED, PUBLISH_HEARTBEAT
from producer.clients import clients_for

log = logging.getLogger(__name__)

#: Most indices one job may run when no index selection is given (planning holds them all).
MAX_JOB_INDICES = 10_000_000
#: Worker processes assumed when sizing batches for a cluster whose size is unknown.
DEFAULT_WORKER_HINT = 8


@dataclass(frozen=True)
class SubmittedJob:
    """A job that was written to the job store and whose chord was sent."""

    job_id: str
    total: int
    n_batches: int
    batch_size: int
    queue: str


@dataclass(frozen=True)
class CheckedJob:
    """A job's input, validated: its pipeline, index selection and partition groups."""

    pipeline: Pipeline
    indices: list[int]
    groups: list[list[int]] | None  # None: no partitions, batches are slices


@dataclass(frozen=True)
class JobPlan:
    """A validated job, ready to be written and sent."""

    pipeline: Pipeline
    indices: list[int]
    batches: list[Batch]
    batch_size: int
    groups: list[list[int]] | None  # None: no partitions, batches are slices


def check_job(
    spec: Mapping[str, Any],
    *,
    origin: str = "<spec>",
    indices: str | Sequence[int] | None = None,
    batch_size: int | None = None,
) -> CheckedJob:
    """Validate ``spec``, the index selection and the batch size, touching no broker (an
    object-store output's bucket is probed: :func:`check_outputs`).

    Raises
    ------
    SpecError, IndexSelectionError, PartitionConflictError, ValueError
        For every mistake in the input, before anything is enqueued.
    """
    pipeline = build_pipeline(spec, origin)
    check_outputs(pipeline, origin)
    try:
        n = len(pipeline)
    except OverflowError:  # a source claiming more than sys.maxsize items (count: 1e19)
        n = MAX_JOB_INDICES + 1
    if indices is None and n > MAX_JOB_INDICES:
        raise IndexSelectionError(
            f"{origin}: the pipeline has more than {MAX_JOB_INDICES:,} indices, more than one "
            "job may run. Check the source's params, or run a part with --indices."
        )
    if indices is None:
        chosen = list(range(n))
        if not chosen:
            chosen = check_indices(chosen, n)  # raises: nothing to run
    elif isinstance(indices, str):
        chosen = parse_indices(indices, n)
    else:
        chosen = check_indices(list(indices), n)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"Batch size must be a positive integer, got {batch_size!r}.")
    return CheckedJob(pipeline, chosen, pipeline.partition_groups_or_none(chosen))


#: Attributes naming where a component writes (the record components, stateful filters).
OUTPUT_ATTRIBUTES = ("output_dir", "output", "_output_path")


def check_outputs(pipeline: Pipeline, origin: str = "<spec>") -> None:
    """Probe every object-store output of ``pipeline`` (sink and filters): an unreachable
    endpoint, refused credentials or a missing bucket is one :class:`SpecError` before
    anything is enqueued, not a failure of every index. Local paths are not touched."""
    for part in (*pipeline.filters, pipeline.sink):
        for attribute in OUTPUT_ATTRIBUTES:
            value = getattr(part, attribute, None)
            if not isinstance(value, str) or "://" not in value:
                continue
            from curator_worker.components.storage import (  # fsspec: only when needed
                check_output_location,
                resolve_storage_options,
            )

            owner = type(part).__name__
            try:
                options = resolve_storage_options(getattr(part, "storage_options", None), owner)
                check_output_location(value, options, owner)
            except ValueError as exc:
                raise SpecError(f"{origin}: {exc}") from None
            break


def plan_job(
    spec: Mapping[str, Any],
    *,
    origin: str = "<spec>",
    indices: str | Sequence[int] | None = None,
    batch_size: int | None = None,
    n_workers_hint: int = DEFAULT_WORKER_HINT,
) -> JobPlan:
    """Validate ``spec`` (:func:`check_job`) and plan its batches, touching no server.

    Raises
    ------
    SpecError, IndexSelectionError, PartitionConflictError, ValueError
        For every mistake in the input, before anything is enqueued.
    """
    checked = check_job(spec, origin=origin, indices=indices, batch_size=batch_size)
    return _plan(checked, batch_size, n_workers_hint)


def _plan(
    checked: CheckedJob, batch_size: int | None, workers: int,
    cost: IndexCost | None = None, visibility_timeout: float | None = None,
) -> JobPlan:
    """Batches of ``batch_size``, or tail-balanced automatic ones for ``workers`` processes.

    ``cost`` (what the last run of the spec measured) coarsens automatic batches of cheap
    or uniform indices, and keeps them under a third of ``visibility_timeout``
    (:func:`~curator_worker.contract.planning.balanced_batch_sizes`).
    """
    pipeline, indices, groups = checked.pipeline, checked.indices, checked.groups
    seconds, spread = cost if cost is not None else (None, None)
    longest = visibility_timeout / 3 if visibility_timeout else None
    if batch_size is not None:
        batches = (plan_independent_batches(indices, batch_size) if groups is None
                   else plan_batches(groups, batch_size))
    elif groups is None:
        batches = plan_balanced_batches(indices, workers, seconds, spread, longest)
    else:
        sizes = balanced_batch_sizes(len(indices), workers, index_seconds=seconds,
                                     spread=spread, max_batch_seconds=longest)
        batches = plan_sized_batches(groups, sizes)
    size = batch_size or max((len(b.indices) for b in batches), default=1)
    return JobPlan(pipeline, indices, batches, size, groups)


def check_broker(app: Celery, settings: Settings, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds with a redacted URL if the broker is unreachable."""
    if is_redis_url(settings.broker_url):
        return  # the job store check below already reached it if it is the same server
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - kombu raises many transport-specific errors
        raise BrokerUnavailableError(
            f"Cannot reach the broker at {redact_url(settings.broker_url)}: "
            f"{type(exc).__name__}. Check CURATOR_BROKER_URL and that the broker is running."
        ) from None


def publish_chord(
    app: Celery, job_id: str, batches: Sequence[Batch], queue: str,
    sent_events: bool | None = None,
) -> None:
    """Send ``chord([run_batch per batch], gather)`` for ``job_id``.

    Bulk publishing (:mod:`producer.publish`): standard Celery messages pipelined to a
    Redis broker, the chord size set before the first header; kombu's producer batch or
    Celery's canvas on other brokers and result backends. ``sent_events``: send
    ``task-sent`` events (default: as the app is configured).
    """
    from producer.publish import publish_chord as publish_chord_bulk

    publish_chord_bulk(app, job_id, batches, queue, sent_events=sent_events)


@contextmanager
def _publishing_heartbeat(store: JobStore, job_id: str) -> Iterator[None]:
    """Refresh the job's publishing mark every :data:`PUBLISH_HEARTBEAT` seconds in the
    block: a producer killed mid-publishing stops it, and ``curator-jobs status`` says the
    submit did not finish (:attr:`JobStatus.submit_unfinished`)."""
    since, stop = time.time(), threading.Event()

    def beat() -> None:
        while not stop.wait(PUBLISH_HEARTBEAT):
            try:
                store.publishing_heartbeat(job_id, since)
            except Exception:  # noqa: BLE001 - the publishing itself reports a dead store
                log.debug("job %s: publishing heartbeat failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"publishing-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        # Not joined: waiting for the thread to wake and see the flag cost milliseconds per
        # job on a busy machine, and a beat that comes after the publishing mark is cleared
        # writes nothing (refresh_publishing.lua).
        stop.set()


def submit_job(
    spec: Mapping[str, Any],
    settings: Settings,
    *,
    origin: str = "<spec>",
    indices: str | Sequence[int] | None = None,
    batch_size: int | None = None,
    queue: str | None = None,
    n_workers_hint: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> SubmittedJob:
    """Validate, plan, write and send a job; return its id and plan.

    Parameters
    ----------
    spec : Mapping
        The pipeline spec.
    settings : Settings
        The cluster (``settings.require_cluster()`` must pass).
    origin : str
        Where the spec came from, for error messages.
    indices : str | Sequence[int], optional
        ``"0-99,200"`` or a list; default all.
    batch_size : int, optional
        Indices per batch; default from the index count and ``n_workers_hint``.
    queue : str, optional
        Queue for the tasks (default ``settings.queue``).
    n_workers_hint : int, optional
        Worker processes expected, for automatic batch sizes; by default the live workers
        are asked (their pool sizes summed), else :data:`DEFAULT_WORKER_HINT` is assumed.
    options : Mapping, optional
        Extra job options stored with the job.

    Raises
    ------
    SpecError, IndexSelectionError, PartitionConflictError, ValueError
        Bad input; nothing was written or sent.
    ConfigurationError, BrokerUnavailableError
        No reachable cluster; nothing was written or sent.
    """
    checked = check_job(spec, origin=origin, indices=indices, batch_size=batch_size)
    settings.require_cluster()
    queue = queue or settings.queue
    app, store = clients_for(settings)
    check_broker(app, settings)
    nodes = live_nodes(store.client, queue)
    # task-sent events only serve a Flower that also sees the workers' task events
    sent_events = None if not nodes or any(n.get("task_events", True) for n in nodes) \
        else False
    stored_spec = {k: v for k, v in spec.items() if k != "metadata"}
    workers = n_workers_hint or sum(int(n.get("concurrency") or 0) for n in nodes) \
        or DEFAULT_WORKER_HINT
    cost = store.index_cost(spec_hash(stored_spec)) if batch_size is None else None
    plan = _plan(checked, batch_size, workers, cost, settings.visibility_timeout)
    job_id = new_job_id()
    job_options = {"batch_size": plan.batch_size, "origin": origin, "total": len(plan.indices),
                   **(options or {})}
    store.create_job(
        job_id,
        stored_spec,
        job_options,
        [(b.key, b.indices) for b in plan.batches],
        total=len(plan.indices),
        queue=queue,
        publishing=True,
    )
    try:
        with _publishing_heartbeat(store, job_id):
            publish_chord(app, job_id, plan.batches, queue, sent_events)
        store.published(job_id)
    except Exception as exc:
        store.record_error(job_id, f"publishing the tasks failed: {type(exc).__name__}")
        store.set_state(job_id, FAILED)
        raise BrokerUnavailableError(
            f"Publishing job {job_id} to {redact_url(settings.broker_url)} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    log.info("submitted job %s: %d indices in %d batches", job_id, len(plan.indices),
             len(plan.batches))
    return SubmittedJob(job_id, len(plan.indices), len(plan.batches), plan.batch_size, queue)
