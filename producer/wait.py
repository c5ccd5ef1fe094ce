"""Waiting for a job: poll the job store's counters (never Celery result objects).

Works from any machine and for a job submitted elsewhere. If every batch is committed but
the job is not finished after a grace period (a lost chord callback), gather is sent again;
it is idempotent. Batches a Redis broker lost when a worker node died while receiving them
are sent again (:mod:`producer.rescue`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
from dataclasses import dataclass

from curator_worker.config import Settings
from curator_worker.errors import JobWaitTimeout
from curator_worker.messaging import GATHER, create_app
from curator_worker.progress import ProgressReporter
from curator_worker.store import JobStatus, JobStore
from curator_worker.store.keys import NODES_KEY
from curator_worker.store.nodes import NODE_TTL
from producer.rescue import LostBatchRescue

#: Seconds a fully committed job may wait for its chord callback before gather is re-sent.
GATHER_GRACE = 15.0


#: Seconds since a worker process last started a batch of a job for it to count as working.
WORKER_WINDOW = 60.0


@dataclass
class LiveProgress:
    """What ``curator-jobs status`` and ``wait`` show of a job, read the same way.

    Attributes
    ----------
    status : JobStatus
        The job's counters.
    inflight : int
        Indices processed by running batches, not committed yet.
    workers : int
        Live worker processes that started a batch of the job recently.
    listeners : int | None
        Live worker nodes consuming the job's queue (``None``: unknown).
    """

    status: JobStatus
    inflight: int
    workers: int
    listeners: int | None

    @property
    def live(self) -> int:
        """Indices succeeded so far, committed or not (what the progress bar shows)."""
        status = self.status
        return min(status.done + self.inflight, status.total - status.failed)

    @property
    def note(self) -> str:
        """``workers N``, or why nothing runs (no worker listens on the queue)."""
        if self.status.is_final:
            return self.status.state
        if self.workers == 0 and self.listeners == 0:
            queue = self.status.queue or "curator"
            return (f"no worker listens on queue {queue}: start one with "
                    f"`curator-worker -Q {queue}` (same CURATOR_BROKER_URL)")
        return f"workers {self.workers}"


def live_progress(store: JobStore, job_id: str) -> LiveProgress:
    """The live progress of ``job_id``: counters, in-flight indices, live workers.

    Worker processes are counted only on live nodes (a heartbeat within
    :data:`~curator_worker.store.NODE_TTL`), at most their node's pool size each: a process
    replaced (``max_tasks_per_child``, a crash) within the window is not counted twice.
    """
    status, inflight, _ = store.progress(job_id, within=WORKER_WINDOW)
    now = time.time()
    pipe = store.client.pipeline(transaction=False)
    pipe.hgetall(store.key(job_id, "workers"))
    pipe.hgetall(NODES_KEY)
    seen, nodes_raw = pipe.execute()
    nodes = {}
    for name, raw in nodes_raw.items():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if now - float(entry.get("ts", 0)) <= NODE_TTL:
            nodes[name.decode()] = entry
    pids: dict[str, set[str]] = {}
    for key, stamp in seen.items():
        if now - float(stamp) <= WORKER_WINDOW:
            node, _, pid = key.decode().rpartition("/")
            pids.setdefault(node, set()).add(pid)
    workers = sum(min(len(p), int(nodes[n].get("concurrency") or len(p)))
                  for n, p in pids.items() if n in nodes)
    queue = status.queue or "curator"
    listeners = sum(1 for e in nodes.values() if queue in e.get("queues", []))
    return LiveProgress(status, inflight, workers, listeners)


@dataclass
class RetryRound:
    """The retry round a job is running: its own indices, batches and start.

    Attributes
    ----------
    number : int
        The round (1 for the first retry).
    sizes : dict[str, int]
        The round's batch keys and their index counts.
    started : float | None
        When the retry was sent (epoch seconds), from the job's history.
    """

    number: int
    sizes: dict[str, int]
    started: float | None

    @property
    def total(self) -> int:
        """Indices the round re-runs."""
        return sum(self.sizes.values())

    def processed(self, store: JobStore, job_id: str) -> int:
        """The round's indices whose batch is committed."""
        committed = store.client.hkeys(store.key(job_id, "committed"))
        return sum(self.sizes.get(k.decode(), 0) for k in committed)


def retry_round(store: JobStore, job_id: str, status: JobStatus,
                finished_too: bool = False) -> RetryRound | None:
    """The retry round ``job_id`` runs now, or ``None`` (not running, or never retried).

    ``finished_too``: also the last round of a job that ended (whoever just sent a retry
    and waits on it: a quick round may end before the first look).
    """
    if status.is_final and not finished_too:
        return None
    record = store.record(job_id)
    number = int(record.get("retries") or 0)
    if number < 1:
        return None
    prefix = f"r{number}-"
    sizes = {k: len(v) for k, v in store.batches(job_id).items() if k.startswith(prefix)}
    if not sizes:
        return None
    from curator_worker.store.history import job_history

    retries = [e for e in job_history(store, job_id) if e.get("action") == "retry"]
    return RetryRound(number, sizes, retries[-1].get("at") if retries else None)


def resend_gather(settings: Settings, job_id: str, queue: str) -> None:
    """Send ``curator.gather`` for ``job_id`` again (safe: gather is idempotent)."""
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
    retrying: bool = False,
    embedded: bool = False,
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
    retrying : bool
        The caller just sent a retry: progress shows that round's indices and rate, even
        if the round already ended.
    embedded : bool
        The job runs on an embedded cluster started for it: while its node boots, progress
        says so instead of telling the user to start a worker.
    """
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise ValueError(f"The wait timeout must be a finite number of seconds, got {timeout!r}.")
    if not (math.isfinite(poll) and poll > 0):
        raise ValueError(f"The poll interval must be a positive number of seconds, got {poll!r}.")
    status = store.status(job_id)
    started = time.monotonic()
    committed_since: float | None = None
    rescue = LostBatchRescue(store, settings, job_id) if settings is not None else None
    # a retry round shows its own indices and rate, not the whole job's
    again = retry_round(store, job_id, status, finished_too=retrying) if progress else None
    total, label = status.total, f"job {job_id}"
    since = status.started or status.created
    if again is not None:
        total, label = again.total, f"job {job_id} retry {again.number}"
        since = again.started or time.time()
    with ProgressReporter(total, progress, label=label, started=since) as bar, \
            closing(rescue) if rescue is not None else nullcontext():
        while True:
            view = live_progress(store, job_id)
            status = view.status
            note = view.note
            if embedded and view.listeners == 0 and view.workers == 0:
                note = "embedded workers starting"
            if again is None:
                bar.update(view.live, status.failed, note=note)
            elif not status.is_final:
                bar.update(min(again.processed(store, job_id) + view.inflight, again.total),
                           note=note)
            if status.is_final:
                if again is None:
                    bar.update(status.done, status.failed, note=status.state, force=True)
                else:
                    bar.update(again.total - status.failed, status.failed, note=status.state,
                               force=True)
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
