"""What a job's report shows, read from the job store: :class:`ReportData`, and the
formatting every part of the report shares (durations, time scales, lane labels)."""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from curator_worker.metrics import stage_order
from curator_worker.store import FINAL_STATES, Job, JobStatus

#: Characters of a lane label on the timeline's axis (longer ones are cut in the middle).
MAX_LANE_LABEL = 40



@dataclass
class ReportData:
    """Everything a report shows, read from the job store once.

    Attributes
    ----------
    status : JobStatus
        State and counters.
    batches : list[dict]
        Committed batches (:meth:`Job.batches`).
    metrics : list[dict]
        Per-index metrics (:meth:`Job.metrics`).
    failures : dict[int, dict]
        Failed indices and their error records (:meth:`Job.failures`).
    generated : float
        When the data was read (epoch seconds).
    spec : dict
        The job's pipeline spec (components and params).
    history : list[dict]
        Its retries and resumes (:func:`~curator_worker.store.history.job_history`).
    """

    status: JobStatus
    batches: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    failures: dict[int, dict[str, Any]]
    generated: float
    spec: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_job(cls, job: Job) -> ReportData:
        """Read a job's status, batches, metrics and failures.

        Parameters
        ----------
        job : Job
            The job.

        Returns
        -------
        ReportData
        """
        from curator_worker.store.history import job_history

        status = job.status()  # first: the rest is at least as recent as the counters
        return cls(status=status, batches=job.batches(), metrics=job.metrics(),
                   failures=job.failures(), generated=time.time(),
                   spec=job.store.record(job.job_id)["spec"],
                   history=job_history(job.store, job.job_id))

    @property
    def is_running(self) -> bool:
        """True while the job has not reached a final state."""
        return self.status.state not in FINAL_STATES

    @property
    def wall_seconds(self) -> float:
        """Creation to finish (to now while the job runs)."""
        end = self.status.finished if self.status.finished is not None else self.generated
        return max(end - self.status.created, 0.0)

    @property
    def busy_seconds(self) -> float | None:
        """First batch picked up to finish (to now while running); None before any batch."""
        if self.status.started is None:
            return None
        end = self.status.finished if self.status.finished is not None else self.generated
        return max(end - self.status.started, 0.0)

    @property
    def throughput(self) -> float | None:
        """Indices processed (done or failed) per second since the first batch started."""
        busy = self.busy_seconds
        if not busy or not self.status.processed:
            return None
        return self.status.processed / busy


def lane_label(node: str | None, pid: Any, host: str | None = None) -> str:
    """The label of one worker process: ``"<node> <pid>"``.

    Parameters
    ----------
    node : str or None
        Celery node name (``w1@host``); the host name stands in when it is empty.
    pid : Any
        The worker process id.
    host : str, optional
        Host name, used when ``node`` is empty.

    Returns
    -------
    str

    Examples
    --------
    >>> lane_label("w1@host-a", 4242)
    'w1@host-a 4242'
    >>> lane_label("", None, "host-b")
    'host-b ?'
    """
    name = node or host or "?"
    return f"{name} {pid if pid is not None else '?'}"


def timeline_lanes(batches: Iterable[Mapping[str, Any]]) -> list[str]:
    """The timeline's lanes, top to bottom: one label per worker process, sorted.

    Parameters
    ----------
    batches : Iterable[Mapping]
        Committed batches (:meth:`Job.batches`).

    Returns
    -------
    list[str]
        :func:`lane_label` of every (node, pid) that committed a batch.
    """
    keys = {(b.get("node") or b.get("host") or "?", _pid_key(b.get("pid"))) for b in batches}
    return [lane_label(node, pid) for node, pid in sorted(keys, key=_lane_sort_key)]


def _pid_key(pid: Any) -> Any:
    return pid if pid is not None else "?"


def _lane_sort_key(key: tuple[str, Any]) -> tuple[str, int, str]:
    node, pid = key
    return (node, pid if isinstance(pid, int) else -1, str(pid))


def stage_totals(metrics: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Seconds per stage summed over indices, in pipeline order (source, filters, sink).

    Parameters
    ----------
    metrics : Iterable[Mapping]
        Per-index metrics (:meth:`Job.metrics`); entries without ``stages`` are skipped.

    Returns
    -------
    dict[str, float]
        Stage name (``source``, ``filter[0]:Name``, ..., ``sink``) to seconds; empty when
        no index recorded stage timings.
    """
    totals: dict[str, float] = defaultdict(float)
    for entry in metrics:
        for name, seconds in (entry.get("stages") or {}).items():
            totals[name] += float(seconds)
    return {name: totals[name] for name in sorted(totals, key=stage_order)}


def stage_display(name: str) -> str:
    """``filter[0]:FieldStats`` -> ``filter 0: FieldStats``."""
    match = re.match(r"filter\[(\d+)\]:(.*)", name)
    text = f"filter {match.group(1)}: {match.group(2)}" if match else name
    return text if len(text) <= 44 else text[:43] + "…"


def format_seconds(seconds: float | None) -> str:
    """A short human duration: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``.

    Parameters
    ----------
    seconds : float or None
        Duration; ``None`` gives ``"–"``.

    Returns
    -------
    str

    Examples
    --------
    >>> format_seconds(0.0123), format_seconds(12.34), format_seconds(245), format_seconds(7380)
    ('12.3 ms', '12.3 s', '4 min 05 s', '2 h 03 min')
    """
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


def time_scale(max_seconds: float) -> tuple[float, str]:
    """The unit to plot durations up to ``max_seconds`` in: (seconds per unit, unit name).

    Parameters
    ----------
    max_seconds : float
        The largest value on the axis.

    Returns
    -------
    tuple[float, str]
        ``(0.001, "milliseconds")`` below 1 s, ``(1, "seconds")`` below 10 min,
        ``(60, "minutes")`` below 10 h, else ``(3600, "hours")``.

    Examples
    --------
    >>> time_scale(0.2), time_scale(42), time_scale(900)
    ((0.001, 'milliseconds'), (1.0, 'seconds'), (60.0, 'minutes'))
    """
    if max_seconds < 1:
        return 0.001, "milliseconds"
    if max_seconds < 600:
        return 1.0, "seconds"
    if max_seconds < 36_000:
        return 60.0, "minutes"
    return 3600.0, "hours"


def plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count:,} {singular if count == 1 else plural or singular + 's'}"


def utc_text(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def short_lane(label: str, limit: int = MAX_LANE_LABEL) -> str:
    """A lane label of at most ``limit`` characters: the node name is cut, the pid kept."""
    if len(label) <= limit:
        return label
    node, _, pid = label.rpartition(" ")
    return node[: max(limit - len(pid) - 2, 1)] + "… " + pid


