"""What the dashboard shows, read from the job store and shaped as JSON-ready dicts.

:class:`JobViews` reads only the job store (:class:`~curator_worker.store.JobStore` and the
keys its module documents), so the dashboard works for jobs of any worker, on any host,
as long as it reaches their Redis. Reads a job's size would make expensive (commit
records, failures) are cached until the job's counters move: a finished job costs one
round trip per poll whatever its size.

Per-worker lanes and stage times come from the commit records (one per batch: node, pid,
start and finish, indices, seconds per stage), not from per-index results, so a poll never
decodes a million result records. The lane of a worker process that started a batch it
has not committed yet shows that batch as running.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from curator_worker.errors import JobNotFoundError
from curator_worker.failures import FailureGroup, group_failures, shorten_ranges
from curator_worker.metrics import stage_order
from curator_worker.progress import nice_bin_width
from curator_worker.store import JobStatus, JobStore
from curator_worker.store.nodes import live_nodes

#: Seconds over which the current throughput is measured.
RATE_WINDOW = 10.0
#: Batches drawn in all lanes together, and at most per lane (the most recent ones of each
#: lane; older ones are counted, not drawn), so a poll of a big job stays small.
MAX_BARS = 3000
MAX_BARS_PER_LANE = 300
#: Failure groups sent to the page, and characters of each group's index ranges.
MAX_FAILURE_GROUPS = 50
MAX_RANGES_CHARS = 400
#: Bars in the throughput chart.
THROUGHPUT_BINS = 60
#: Seconds a worker process counts as active after it started a batch.
ACTIVE_WITHIN = 60.0
#: A running job's commit records and failures are read again after this many times what
#: reading them cost (a big job's every second would be mostly spent reading them) ...
REFRESH_FACTOR = 5.0
#: ... and at most this many seconds after the last read.
MAX_STALE = 30.0
#: Jobs whose cached reads are kept (the oldest entries are dropped first).
MAX_CACHED_JOBS = 200


def lane_key(node: str | None, pid: Any, host: str | None = None) -> str:
    """The label of one worker process, ``"<node> <pid>"`` (as the job report names it)."""
    return f"{node or host or '?'} {pid if pid is not None else '?'}"


def pipeline_of(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The components of a spec, in order: ``{role, name, module, params}`` each.

    Parameters
    ----------
    spec : Mapping
        A job's spec (``source``, ``filters``, ``sink``).

    Returns
    -------
    list[dict]
        Source first, then each filter, then the sink (missing parts left out).
    """
    out: list[dict[str, Any]] = []
    parts: list[tuple[str, Any]] = [("source", spec.get("source"))]
    parts += [("filter", f) for f in spec.get("filters") or []]
    parts.append(("sink", spec.get("sink")))
    for role, part in parts:
        if isinstance(part, Mapping):
            out.append({"role": role, "name": str(part.get("name", "?")),
                        "module": str(part.get("module", "")),
                        "params": dict(part.get("params") or {})})
    return out


@dataclass
class _Committed:
    """Aggregates of a job's commit records, valid while its commit count is unchanged."""

    lanes: dict[str, dict[str, Any]]
    stages: dict[str, float]
    stages_estimated: bool
    ends: list[tuple[float, int]]
    last_finished: float | None


def aggregate_commits(records: Iterable[Mapping[str, Any]], t0: float) -> _Committed:
    """Lanes (one per worker process), seconds per stage and completion times of batches.

    Parameters
    ----------
    records : Iterable[Mapping]
        Commit records (:meth:`JobStore.commit_records`).
    t0 : float
        Epoch seconds bars are drawn relative to (the job's creation).
    """
    lanes: dict[str, dict[str, Any]] = {}
    stages: dict[str, float] = {}
    estimated = False
    ends: list[tuple[float, int]] = []
    last: float | None = None
    for record in records:
        label = lane_key(record.get("node"), record.get("pid"), record.get("host"))
        lane = lanes.setdefault(label, {
            "label": label, "node": record.get("node") or "", "host": record.get("host") or "",
            "pid": record.get("pid"), "batches": 0, "indices": 0, "busy": 0.0,
            "redelivered": 0, "bars": [], "last_finished": None})
        n = int(record.get("n") or 0)
        attempt = int(record.get("attempt") or 1)
        lane["batches"] += 1
        lane["indices"] += n
        lane["redelivered"] += attempt > 1
        started, finished = record.get("started"), record.get("finished")
        if started is not None and finished is not None:
            started, finished = float(started), float(finished)
            lane["busy"] += max(finished - started, 0.0)
            lane["bars"].append([round(started - t0, 3), round(finished - t0, 3), n, attempt])
            if lane["last_finished"] is None or finished > lane["last_finished"]:
                lane["last_finished"] = finished
            last = finished if last is None else max(last, finished)
            ends.append((finished, n))
        for stage, seconds in (record.get("stages") or {}).items():
            stages[stage] = stages.get(stage, 0.0) + float(seconds)
        if int(record.get("stages_timed") or 0) < int(record.get("stages_of") or 0):
            estimated = True
    per_lane = min(MAX_BARS_PER_LANE, max(20, MAX_BARS // max(len(lanes), 1)))
    for lane in lanes.values():
        lane["bars"].sort()
        lane["bars"] = lane["bars"][-per_lane:]
    ordered = {k: stages[k] for k in sorted(stages, key=stage_order)}
    return _Committed(lanes, ordered, estimated, sorted(ends), last)


def throughput_series(ends: list[tuple[float, int]], start: float, end: float,
                      bins: int = THROUGHPUT_BINS) -> dict[str, Any]:
    """Indices committed per second in bins from ``start`` to ``end`` (epoch seconds).

    Parameters
    ----------
    ends : list[tuple[float, int]]
        (finish time, indices) of each committed batch.
    start, end : float
        The span to cover.
    bins : int
        About this many bins (1-2-5 widths).

    Returns
    -------
    dict
        ``bin_seconds`` and ``rates`` (indices per second in each bin, oldest first).
    """
    span = max(end - start, 1e-3)
    width = nice_bin_width(span, bins)
    count = max(1, math.ceil(span / width))
    totals = [0] * count
    for finished, n in ends:
        slot = min(max(int((finished - start) / width), 0), count - 1)
        totals[slot] += n
    return {"bin_seconds": width, "rates": [round(t / width, 3) for t in totals]}


@dataclass
class _Entry:
    """A cached read: the counters it was read at, its value, when and at what cost."""

    stamp: tuple[int, ...]
    value: Any
    at: float
    cost: float


class _RateTracker:
    """Indices processed per second over the last :data:`RATE_WINDOW` seconds, per job."""

    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def sample(self, job_id: str, processed: int, now: float) -> float | None:
        samples = self._samples.pop(job_id, None) or deque()
        self._samples[job_id] = samples  # most recently used last
        _trim(self._samples)
        if samples and processed < samples[-1][1]:
            samples.clear()  # a retry round counts from the start again
        samples.append((now, processed))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        first_t, first_p = samples[0]
        if now - first_t < 0.5:
            return None
        return max(processed - first_p, 0) / (now - first_t)


class JobViews:
    """Job store reads for the dashboard and its metrics, with per-job caches.

    Parameters
    ----------
    store : JobStore
        The job store.

    Notes
    -----
    Thread-safe: one lock serializes reads, so the web server may call it from a pool.
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._specs: dict[str, dict[str, Any]] = {}
        self._commits: dict[str, _Entry] = {}
        self._failures: dict[str, _Entry] = {}
        self._rates = _RateTracker()

    # -- cached reads
    def _record(self, job_id: str) -> dict[str, Any]:
        record = self.store.record(job_id)
        self._specs[job_id] = record["spec"]
        _trim(self._specs)
        return record

    def _spec(self, job_id: str) -> dict[str, Any]:
        spec = self._specs.get(job_id)
        if spec is None:
            spec = self._record(job_id)["spec"]
        return spec

    def _committed(self, status: JobStatus) -> _Committed:
        return self._cached(
            self._commits, status, (status.committed_batches, status.n_batches),
            lambda: aggregate_commits(self.store.commit_records(status.job_id).values(),
                                      status.created))

    def _groups(self, status: JobStatus) -> list[dict[str, Any]]:
        return self._cached(
            self._failures, status, (status.failed, status.committed_batches, status.n_batches),
            lambda: [_group_view(g) for g in group_failures(self.store.failures(status.job_id))]
            if status.failed else [])

    @staticmethod
    def _cached(cache: dict[str, _Entry], status: JobStatus, stamp: tuple[int, ...],
                compute: Callable[[], Any]) -> Any:
        """``compute()``, cached until ``stamp`` changes.

        While the job runs, a stale value is kept for :data:`REFRESH_FACTOR` times what
        computing it cost (at most :data:`MAX_STALE` seconds), so a job with a million
        failures does not cost a million-record read every second; a finished job is
        always read afresh once, then never again.
        """
        now = time.monotonic()
        entry = cache.get(status.job_id)
        if entry is not None and entry.stamp == stamp:
            return entry.value
        if (entry is not None and not status.is_final
                and now - entry.at < min(REFRESH_FACTOR * entry.cost, MAX_STALE)):
            return entry.value
        value = compute()
        cache[status.job_id] = _Entry(stamp, value, now, time.monotonic() - now)
        _trim(cache)
        return value

    def _batches_in_flight(self, status: JobStatus) -> int:
        """Batches delivered to a worker and not committed (0 once the job ended)."""
        if status.is_final:
            return 0
        pipe = self.store.client.pipeline(transaction=False)
        pipe.hlen(self.store.key(status.job_id, "attempts"))
        pipe.hlen(self.store.key(status.job_id, "committed"))
        begun, committed = pipe.execute()
        return max(int(begun) - int(committed), 0)

    # -- views
    def _summary(self, job_id: str, now: float) -> tuple[dict[str, Any], JobStatus]:
        status, inflight, workers = self.store.progress(job_id, within=ACTIVE_WITHIN)
        spec = self._spec(job_id)
        inflight = 0 if status.is_final else inflight
        live = min(status.processed + inflight, status.total)
        end = status.finished if status.finished is not None else now
        busy = max(end - status.started, 0.0) if status.started is not None else None
        average = status.processed / busy if busy and status.processed else None
        current = None if status.is_final else self._rates.sample(job_id, live, now)
        rate = current if current else average
        eta = None
        if not status.is_final and rate:
            eta = max(status.total - live, 0) / rate
        summary = status.as_dict()
        summary.update({
            "in_flight": inflight,
            "processed": status.processed,
            "processed_live": live,
            "pending": max(status.total - live, 0),
            "percent": round(100.0 * live / status.total, 1) if status.total else 100.0,
            "workers_active": 0 if status.is_final else workers,
            "rate_current": round(current, 3) if current is not None else None,
            "rate_average": round(average, 3) if average is not None else None,
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "elapsed_seconds": round(max(end - status.created, 0.0), 3),
            "source": str((spec.get("source") or {}).get("name", "?")),
            "components": [c["name"] for c in pipeline_of(spec)],
        })
        return summary, status

    def jobs(self, limit: int = 20) -> dict[str, Any]:
        """The most recent jobs, newest first: ``{"now", "jobs": [summary, ...]}``."""
        now = time.time()
        with self._lock:
            out = []
            ids = self.store.list_jobs(limit)
            for job_id in ids:
                try:
                    out.append(self._summary(job_id, now)[0])
                except JobNotFoundError:  # expired between the listing and the read
                    continue
        return {"now": now, "jobs": out}

    def job(self, job_id: str) -> dict[str, Any]:
        """Everything the page shows about one job.

        Raises
        ------
        JobNotFoundError
            If there is no such job (never submitted, or expired).
        """
        now = time.time()
        with self._lock:
            summary, status = self._summary(job_id, now)
            record = self._record(job_id)
            committed = self._committed(status)
            groups = self._groups(status)
            running = self._running(status, committed)
            nodes = live_nodes(self.store.client, status.queue) if status.queue else []
            summary["batches_in_flight"] = self._batches_in_flight(status)
        lanes = []
        for label in sorted(set(committed.lanes) | set(running), key=_lane_sort):
            lane = dict(committed.lanes.get(label) or {
                "label": label, "node": label.rsplit(" ", 1)[0], "host": "", "pid": None,
                "batches": 0, "indices": 0, "busy": 0.0, "redelivered": 0, "bars": [],
                "last_finished": None})
            lane["running_since"] = (round(running[label] - status.created, 3)
                                     if label in running else None)
            lane["busy"] = round(lane["busy"], 3)
            lane.pop("last_finished", None)
            lanes.append(lane)
        stage_total = sum(committed.stages.values()) or 1.0
        start = status.started or status.created
        end = status.finished or (now if not status.is_final else committed.last_finished or now)
        summary.update({
            "now": now,
            "t0": status.created,
            "span_seconds": round(max(end, committed.last_finished or end) - status.created, 3),
            "pipeline": pipeline_of(record["spec"]),
            "options": record["options"],
            "retries": int(record.get("retries") or 0),
            "lanes": lanes,
            "stages": [{"stage": k, "seconds": round(v, 6),
                        "share": round(v / stage_total, 4)} for k, v in committed.stages.items()],
            "stages_estimated": committed.stages_estimated,
            "throughput": throughput_series(committed.ends, start, end),
            "failure_groups": groups[:MAX_FAILURE_GROUPS],
            "failure_groups_total": len(groups),
            "nodes_live": len(nodes),
            "processes_live": sum(int(n.get("concurrency") or 0) for n in nodes),
        })
        return summary

    def _running(self, status: JobStatus, committed: _Committed) -> dict[str, float]:
        """Worker processes running a batch of the job now: lane -> when it started.

        A process whose last batch start is later than its last commit has a batch it has
        not committed: it is running it, or it died with it (then it shows as running
        until the job ends; the batch is redelivered to another process).
        """
        if status.is_final:
            return {}
        raw = self.store.client.hgetall(self.store.key(status.job_id, "workers"))
        out = {}
        for name, value in raw.items():
            node, _, pid = name.decode().rpartition("/")
            label = lane_key(node, int(pid) if pid.isdigit() else pid)
            started = float(value)
            lane = committed.lanes.get(label)
            finished = lane.get("last_finished") if lane else None
            if finished is None or started > finished:
                out[label] = started
        return out

    def metrics(self, limit: int) -> list[dict[str, Any]]:
        """Job-level numbers for the Prometheus endpoint, for the ``limit`` newest jobs."""
        now = time.time()
        with self._lock:
            rows = []
            for job_id in self.store.list_jobs(limit):
                try:
                    status, inflight, workers = self.store.progress(job_id, within=ACTIVE_WITHIN)
                    spec = self._spec(job_id)
                except JobNotFoundError:
                    continue
                committed = self._committed(status)
                rows.append({
                    "status": status,
                    "source": str((spec.get("source") or {}).get("name", "?")),
                    "indices_in_flight": 0 if status.is_final else inflight,
                    "batches_in_flight": self._batches_in_flight(status),
                    "workers": 0 if status.is_final else workers,
                    "stages": dict(committed.stages),
                    "now": now,
                })
        return rows


def _lane_sort(label: str) -> tuple[str, int, str]:
    node, _, pid = label.rpartition(" ")
    return (node, int(pid) if pid.isdigit() else -1, pid)


def _group_view(group: FailureGroup) -> dict[str, Any]:
    """A failure group as the page shows it: indices as (shortened) ranges, one traceback."""
    view = group.as_dict(with_traceback=True)
    del view["indices"]
    view["ranges"] = shorten_ranges(view["ranges"], MAX_RANGES_CHARS)
    return view


def _trim(cache: dict[str, Any]) -> None:
    """Drop the oldest entries of ``cache`` beyond :data:`MAX_CACHED_JOBS`."""
    while len(cache) > MAX_CACHED_JOBS:
        del cache[next(iter(cache))]
