"""A job's report: one self-contained HTML page and four PNG charts.

``curator-jobs report JOB --out DIR`` calls :func:`write_report`, which reads the job's
status, committed batches, per-index metrics and failures from the job store
(:class:`~curator_worker.store.Job`) and writes into ``DIR``:

``report.html``
    Summary header, the four charts embedded as base64 ``data:`` URIs (the page needs no
    other file), a table of worker processes and a table of failures. Inline CSS; every
    piece of text from the job store is escaped.
``timeline.png``
    One lane per worker process (``node pid``), one bar per committed batch.
``stages.png``
    Seconds per pipeline stage (source, each filter, sink), summed over indices.
``throughput.png``
    Indices completed per second over time, and the cumulative count.
``slowest.png``
    The slowest indices by wall time.

Every chart is :data:`CHART_WIDTH_PX` × :data:`CHART_HEIGHT_PX` pixels whatever the data,
and draws a short explanation instead of axes when it has nothing to show (a job with
metrics off, every index failed, nothing committed yet).

Charts are drawn with matplotlib's object-oriented API on the Agg canvas
(:class:`matplotlib.figure.Figure` + :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`),
never through ``pyplot``: it needs no display, and it neither switches the backend of a
program that imports this module (a notebook) nor leaves figures open in pyplot's registry.
matplotlib is the ``report`` extra: ``pip install 'curator-worker[report]'``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import matplotlib
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "Job reports need matplotlib: pip install 'curator-worker[report]'."
    ) from exc

import numpy as np

from curator_worker.metrics import stage_order
from curator_worker.store import FINAL_STATES, Job, JobStatus

log = logging.getLogger(__name__)

#: Name of the HTML page in the output folder.
REPORT_NAME = "report.html"
#: The chart files, in the order the page shows them.
CHART_FILES = ("timeline.png", "stages.png", "throughput.png", "slowest.png")
#: Size of every chart, in pixels (inches × :data:`CHART_DPI`).
CHART_WIDTH_PX = 1200
CHART_HEIGHT_PX = 500
CHART_DPI = 100
#: Bars in the slowest-indices chart.
SLOWEST_COUNT = 20
#: Rows of the failures table (the rest is counted, not listed).
MAX_FAILURE_ROWS = 500
#: Characters of a lane label on the timeline's axis (longer ones are cut in the middle).
MAX_LANE_LABEL = 40

_STYLE: dict[str, Any] = {
    "font.size": 11,
    "axes.labelsize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
    "legend.fontsize": 10,
    "legend.framealpha": 0.9,
}
_OK_COLOR = "#4C72B0"
_FAILED_COLOR = "#C44E52"
_CUMULATIVE_COLOR = "#DD8452"
_REDELIVERED_COLOR = "#D62728"


# --------------------------------------------------------------------------- data


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


def _stage_display(name: str) -> str:
    """``filter[0]:FieldStats`` -> ``filter 0: FieldStats``."""
    match = re.match(r"filter\[(\d+)\]:(.*)", name)
    text = f"filter {match.group(1)}: {match.group(2)}" if match else name
    return text if len(text) <= 44 else text[:43] + "…"


def nice_bin_width(span: float, target_bins: int = 40) -> float:
    """A 1-2-5 bin width that cuts ``span`` seconds into about ``target_bins`` bins.

    Parameters
    ----------
    span : float
        Seconds to cover.
    target_bins : int
        Bins wanted.

    Returns
    -------
    float
        At least 1 ms.

    Examples
    --------
    >>> nice_bin_width(10.0)
    0.5
    >>> nice_bin_width(0.0)
    0.001
    """
    raw = max(span / max(target_bins, 1), 1e-3)
    exponent = math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        width = factor * 10.0**exponent
        if width >= raw * 0.999:
            return float(f"{width:.3g}")
    return float(f"{10.0 ** (exponent + 1):.3g}")  # pragma: no cover - loop always returns


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


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count:,} {singular if count == 1 else plural or singular + 's'}"


def _utc(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _short_lane(label: str, limit: int = MAX_LANE_LABEL) -> str:
    """A lane label of at most ``limit`` characters: the node name is cut, the pid kept."""
    if len(label) <= limit:
        return label
    node, _, pid = label.rpartition(" ")
    return node[: max(limit - len(pid) - 2, 1)] + "… " + pid


# --------------------------------------------------------------------------- charts


def _new_figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(CHART_WIDTH_PX / CHART_DPI, CHART_HEIGHT_PX / CHART_DPI),
                 dpi=CHART_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png_bytes(fig: Figure) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    # no bbox_inches="tight": the file must be exactly CHART_WIDTH_PX x CHART_HEIGHT_PX
    fig.savefig(buffer, format="png", dpi=CHART_DPI, facecolor="white")
    return buffer.getvalue()


def _title(ax: Axes, text: str) -> None:
    """The chart's title, centered on the figure (long axis labels do not push it off)."""
    ax.figure.suptitle(text, fontsize=14, fontweight="bold")


def _empty(ax: Axes, title: str, message: str) -> None:
    """Draw ``message`` in place of a chart."""
    _title(ax, title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13, color="#555555",
            wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def _lane_colors(n: int) -> list[Any]:
    """``n`` distinct lane colors, none of them red (red marks redelivered batches)."""
    cmap = matplotlib.colormaps["tab10" if n <= 9 else "tab20"]
    reds = {3} if cmap.N == 10 else {6, 7}
    palette = [cmap(i) for i in range(cmap.N) if i not in reds]
    return [palette[i % len(palette)] for i in range(n)]


def draw_timeline(ax: Axes, data: ReportData) -> None:
    """Worker timeline: a lane per worker process, a bar per committed batch.

    Bars run from the batch's ``started`` to ``finished`` in seconds since the job was
    created; a batch delivered more than once (its first worker died) has a red edge, a
    batch with failed indices is hatched.

    Parameters
    ----------
    ax : Axes
        Where to draw.
    data : ReportData
        The job.
    """
    title = "Worker timeline: committed batches per worker process"
    if data.is_running:
        title += " (job still running)"
    batches = [b for b in data.batches if b.get("started") is not None
               and b.get("finished") is not None]
    if not batches:
        _empty(ax, title, "No committed batches yet." if data.is_running
               else "No committed batch has timing information.")
        return
    lanes = timeline_lanes(batches)
    row = {label: n for n, label in enumerate(lanes)}
    colors = _lane_colors(len(lanes))
    failed_batches = {m["batch"] for m in data.metrics if not m.get("ok", True)}
    t0 = data.status.created
    span = max(float(b["finished"]) for b in batches) - t0
    marks = [(text, when - t0, style) for text, when, style in (
        ("job started", data.status.started, ":"),
        ("job finished", data.status.finished, "--"),
        ("now (still running)", data.generated if data.is_running else None, "-."),
    ) if when is not None and when - t0 <= span * 1.5]  # a stalled job's "now" would squash
    span = max([span] + [at for _, at, _ in marks])
    scale, unit = time_scale(span)
    min_width = max(span, 1e-3) * 0.002  # an instant batch still shows as a sliver
    groups: dict[tuple[int, bool, bool], list[tuple[float, float]]] = defaultdict(list)
    for batch in batches:
        label = lane_label(batch.get("node"), batch.get("pid"), batch.get("host"))
        start = float(batch["started"]) - t0
        width = max(float(batch["finished"]) - float(batch["started"]), min_width)
        retried = int(batch.get("attempt", 1) or 1) > 1
        groups[(row[label], retried, batch.get("batch") in failed_batches)].append(
            (start / scale, width / scale))
    redelivered = failing = 0
    for (y, retried, has_failures), spans in groups.items():  # one call per lane and kind
        redelivered += len(spans) if retried else 0
        failing += len(spans) if has_failures else 0
        ax.barh([y] * len(spans), [w for _, w in spans], left=[x for x, _ in spans],
                height=0.7, color=colors[y],
                edgecolor=_REDELIVERED_COLOR if retried else "white",
                linewidth=2.0 if retried else 0.6, hatch="xxx" if has_failures else None)
    handles: list[Any] = []
    for text, at, style in marks:
        handles.append(ax.axvline(at / scale, color="#333333", linestyle=style, linewidth=1.2,
                                  label=text))
    ax.set_yticks(range(len(lanes)))
    size = min(10.0, 240.0 / len(lanes))  # points per label that fit the lane height
    step = 1 if size >= 6 else math.ceil(6 / size)  # too many lanes: label every step-th
    ax.set_yticklabels([_short_lane(label) if n % step == 0 else ""
                        for n, label in enumerate(lanes)], fontsize=max(size, 6.0))
    pad = max(0.0, (4 - len(lanes)) / 2)  # a lone lane is not a wall of color
    ax.set_ylim(len(lanes) - 0.5 + pad, -0.5 - pad)  # first lane on top
    ax.set_xlim(0, span * 1.02 / scale if span > 0 else 1.0)
    ax.set_xlabel(f"{unit} since the job was created")
    ax.set_ylabel("worker process (node pid)")
    ax.grid(axis="x", alpha=0.3)
    running = " (job still running)" if data.is_running else ""
    batch_count = _plural(len(batches), "committed batch", "committed batches")
    lane_count = _plural(len(lanes), "worker process", "worker processes")
    _title(ax, f"Worker timeline: {batch_count} on {lane_count}{running}")
    if redelivered:
        handles.append(Patch(facecolor="#bbbbbb", edgecolor=_REDELIVERED_COLOR, linewidth=2,
                             label=f"redelivered (attempt > 1): {redelivered:,}"))
    if failing:
        handles.append(Patch(facecolor="#888888", edgecolor="white", hatch="xxx",
                             label=f"has failed indices: {failing:,}"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13),
              ncol=max(len(handles), 1), frameon=False)


def draw_stages(ax: Axes, data: ReportData) -> None:
    """Time per stage: seconds per pipeline stage, summed over indices, with values.

    Parameters
    ----------
    ax : Axes
        Where to draw.
    data : ReportData
        The job.
    """
    title = "Time per stage (summed over indices)"
    totals = stage_totals(data.metrics)
    if not totals:
        if data.status.options.get("metrics") is False:
            why = "The job ran with metrics off (options: metrics=False)."
        elif not any(m.get("ok") for m in data.metrics):
            why = "No index has succeeded yet; stage timings are recorded for successes."
        else:
            why = "The workers recorded no stage timings for this job."
        _empty(ax, title, f"No stage timings recorded.\n{why}")
        return
    names = list(totals)
    values = [totals[name] for name in names]
    grand = sum(values) or 1.0
    timed = sum(1 for m in data.metrics if m.get("stages"))
    scale, unit = time_scale(max(values))
    y = np.arange(len(names))
    bars = ax.barh(y, [v / scale for v in values], height=0.6, color=_OK_COLOR)
    ax.set_yticks(y, [_stage_display(name) for name in names])
    ax.invert_yaxis()  # pipeline order, top to bottom
    ax.bar_label(bars, labels=[f" {format_seconds(v)}  ({100 * v / grand:.0f}%)"
                               for v in values], padding=2, fontsize=10)
    ax.set_xlim(0, max(values) * 1.25 / scale if max(values) > 0 else 1.0)
    ax.set_xlabel(f"{unit} (each stage's own time, summed over indices)")
    ax.set_ylabel("stage")
    ax.grid(axis="x", alpha=0.3)
    _title(ax, f"Time per stage, summed over {timed:,} indices "
               f"(total {format_seconds(sum(values))})")


def draw_throughput(ax: Axes, data: ReportData) -> None:
    """Indices completed per second over time (bars) and their cumulative count (line).

    Completion times are the successful indices' ``end`` timestamps, in seconds since the
    job started (its first batch was picked up).

    Parameters
    ----------
    ax : Axes
        Where to draw.
    data : ReportData
        The job.
    """
    title = "Throughput: indices completed per second"
    ends_abs = sorted(float(m["end"]) for m in data.metrics if m.get("end") is not None)
    if not ends_abs:
        if data.metrics:
            why = "No index succeeded, so no completion time was recorded."
        else:
            why = "Nothing committed yet." if data.is_running else "No index has a result."
        _empty(ax, title, why)
        return
    t0 = data.status.started if data.status.started is not None else ends_abs[0]
    ends = np.maximum(np.asarray(ends_abs) - t0, 0.0)
    span = float(ends[-1])
    width = nice_bin_width(span)
    edges = np.arange(0.0, span + width, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    counts, edges = np.histogram(ends, bins=edges)
    scale, unit = time_scale(float(edges[-1]))
    ax.bar(edges[:-1] / scale, counts / width, width=width / scale, align="edge",
           color=_OK_COLOR, edgecolor="white", linewidth=0.3,
           label=f"per second ({format_seconds(width)} bins)")
    ax.set_xlabel(f"{unit} since the job started (first batch picked up)")
    ax.set_ylabel("indices completed per second")
    ax.set_xlim(0, edges[-1] / scale)
    ax.set_ylim(0, max(float(counts.max()) / width, 1.0) * 1.3)  # headroom for the legend
    ax.grid(axis="y", alpha=0.3)
    twin = ax.twinx()
    cumulative = np.arange(1, len(ends) + 1)
    twin.step(np.concatenate([[0.0], ends]) / scale, np.concatenate([[0], cumulative]),
              where="post", color=_CUMULATIVE_COLOR, linewidth=2.2, label="cumulative (right axis)")
    twin.set_ylabel("indices completed (cumulative)")
    twin.set_ylim(0, len(ends) * 1.05)
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    twin.spines["right"].set_visible(True)
    twin.spines["top"].set_visible(False)
    rate = len(ends) / span if span > 0 else None
    average = f"{rate:.1f} indices/s on average" if rate else "all at once"
    running = " so far" if data.is_running else ""
    _title(ax, f"Throughput: {len(ends):,} successful indices in {format_seconds(span)}"
               f"{running}, {average}")
    bar_handles, bar_labels = ax.get_legend_handles_labels()
    line_handles, line_labels = twin.get_legend_handles_labels()
    ax.legend(bar_handles + line_handles, bar_labels + line_labels, loc="upper left")


def draw_slowest(ax: Axes, data: ReportData, count: int = SLOWEST_COUNT) -> None:
    """The ``count`` slowest indices by wall time, slowest on top; failed ones in red.

    Parameters
    ----------
    ax : Axes
        Where to draw.
    data : ReportData
        The job.
    count : int
        Bars to draw.
    """
    title = f"The {count} slowest indices"
    timed = [m for m in data.metrics if m.get("seconds") is not None]
    if not timed:
        _empty(ax, title, "Nothing committed yet." if data.is_running
               else "No index has a recorded duration.")
        return
    top = sorted(timed, key=lambda m: (-float(m["seconds"]), m["index"]))[:count]
    values = [float(m["seconds"]) for m in top]
    colors = [_OK_COLOR if m.get("ok", True) else _FAILED_COLOR for m in top]
    scale, unit = time_scale(max(values))
    y = np.arange(len(top))
    bars = ax.barh(y, [v / scale for v in values], height=0.7, color=colors)
    ax.set_yticks(y, [str(m["index"]) for m in top], fontsize=10 if len(top) <= 20 else 8)
    ax.invert_yaxis()
    ax.bar_label(bars, labels=[f" {format_seconds(v)}" for v in values], padding=2,
                 fontsize=9)
    median = float(np.median([float(m["seconds"]) for m in timed]))
    ax.axvline(median / scale, color="#333333", linestyle="--", linewidth=1.2,
               label=f"median of all {len(timed):,} indices: {format_seconds(median)}")
    ax.set_xlim(0, max(values) * 1.15 / scale if max(values) > 0 else 1.0)
    ax.set_xlabel(f"{unit} (wall time of the index)")
    ax.set_ylabel("index (slowest on top)")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if any(not m.get("ok", True) for m in top):
        handles.append(Patch(color=_FAILED_COLOR, label="failed index"))
        labels.append("failed index")
    ax.legend(handles, labels, loc="lower right")
    _title(ax, f"The {len(top)} slowest of {len(timed):,} indices (wall time per index)")


_DRAWERS: dict[str, Callable[[Axes, ReportData], None]] = {
    "timeline.png": draw_timeline,
    "stages.png": draw_stages,
    "throughput.png": draw_throughput,
    "slowest.png": draw_slowest,
}


def render_charts(data: ReportData) -> dict[str, bytes]:
    """Draw every chart of :data:`CHART_FILES` as PNG bytes.

    Parameters
    ----------
    data : ReportData
        The job.

    Returns
    -------
    dict[str, bytes]
        File name to PNG data, in :data:`CHART_FILES` order.
    """
    out: dict[str, bytes] = {}
    with matplotlib.rc_context(_STYLE):
        for name in CHART_FILES:
            fig, ax = _new_figure()
            _DRAWERS[name](ax, data)
            out[name] = _png_bytes(fig)
    return out


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1260px; padding: 0 1em; color: #222; background: #fafafa; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; word-break: break-all; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.state { display: inline-block; padding: 0.15em 0.6em; border-radius: 0.8em; color: #fff;
         font-weight: bold; font-size: 0.9em; }
.state-succeeded { background: #2e7d32; } .state-partial { background: #ef6c00; }
.state-failed { background: #c62828; } .state-cancelled { background: #616161; }
.state-running { background: #1565c0; }
.banner { background: #e3f2fd; border-left: 4px solid #1565c0; padding: 0.6em 1em; }
.error { background: #ffebee; border-left: 4px solid #c62828; padding: 0.6em 1em;
         white-space: pre-wrap; }
table { border-collapse: collapse; background: #fff; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
table.summary th { width: 14em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; background: #fff; border: 1px solid #ddd; padding: 0.5em; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.4em; }
details pre { max-height: 20em; overflow: auto; font-size: 0.85em; background: #f6f6f6;
              padding: 0.5em; }
.muted { color: #777; }
"""

_CAPTIONS = {
    "timeline.png": "One lane per worker process (node and pid), one bar per committed batch "
                    "from its start to its commit, in seconds since the job was created. Red "
                    "edge: a batch delivered again after its worker died; hatched: a batch "
                    "with failed indices.",
    "stages.png": "Each stage's own time (source, each filter, sink; downstream stages "
                  "exclude upstream ones), summed over the indices that recorded timings. "
                  "This is time spent in worker processes, not wall time.",
    "throughput.png": "Successful indices completed per second (bars, left axis) and their "
                      "cumulative count (line, right axis), in seconds since the first batch "
                      "was picked up.",
    "slowest.png": "The slowest indices by wall time (failed ones in red); the dashed line is "
                   "the median over all indices.",
}


def _e(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


def _first_line(text: Any, limit: int = 300) -> str:
    line = next((ln for ln in str(text or "").splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _worker_rows(data: ReportData) -> list[list[str]]:
    per_lane: dict[str, dict[str, Any]] = {}
    for batch in data.batches:
        label = lane_label(batch.get("node"), batch.get("pid"), batch.get("host"))
        lane = per_lane.setdefault(label, {"node": batch.get("node") or "",
                                           "host": batch.get("host") or "",
                                           "pid": batch.get("pid"), "batches": 0,
                                           "indices": 0, "busy": 0.0, "redelivered": 0})
        lane["batches"] += 1
        lane["indices"] += int(batch.get("n", 0) or 0)
        if batch.get("started") is not None and batch.get("finished") is not None:
            lane["busy"] += max(float(batch["finished"]) - float(batch["started"]), 0.0)
        lane["redelivered"] += int(batch.get("attempt", 1) or 1) > 1
    rows = []
    for label in timeline_lanes(data.batches):
        lane = per_lane[label]
        rows.append([_e(label), _e(lane["node"]), _e(lane["host"]), _e(lane["pid"]),
                     str(lane["batches"]), str(lane["indices"]),
                     _e(format_seconds(lane["busy"])), str(lane["redelivered"])])
    return rows


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           numeric: Sequence[int] = (), css: str = "") -> str:
    """An HTML table; ``headers`` are escaped here, cells must already be escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if n in numeric else f"<td>{c}</td>"
                        for n, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    cls = f' class="{_e(css)}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _summary_html(data: ReportData) -> str:
    s = data.status
    lanes = timeline_lanes(data.batches)
    nodes = sorted({b.get("node") or b.get("host") or "?" for b in data.batches})
    throughput = data.throughput
    pending = max(s.total - s.processed, 0)
    metrics_on = s.options.get("metrics", True) is not False
    wall_note = " (so far)" if data.is_running else ""
    rows = [
        ("Job", s.job_id),
        ("State", None),
        ("Indices", f"{s.total} total: {s.done} done, {s.failed} failed, {pending} pending"),
        ("Batches", f"{s.committed_batches} of {s.n_batches} committed"),
        ("Wall time", f"{format_seconds(data.wall_seconds)}{wall_note} from creation; "
                      f"{format_seconds(data.busy_seconds)} since the first batch started"),
        ("Throughput", f"{_rate(throughput)} indices/s (done + failed, since the first batch "
                       "started)" if throughput else "–"),
        ("Worker processes", f"{len(lanes)} on {len(nodes)} node(s): {', '.join(nodes)}"
                             if lanes else "none yet"),
        ("Created", _utc(s.created)),
        ("Started", _utc(s.started)),
        ("Finished", _utc(s.finished) if s.finished is not None else "not yet"),
        ("Queue", s.queue or "–"),
        ("Per-index metrics", "on" if metrics_on else "off (no stage timings)"),
    ]
    body = []
    for label, value in rows:
        if value is None:
            cell = f'<span class="state state-{_e(s.state)}">{_e(s.state)}</span>'
        else:
            cell = _e(value)
        body.append(f"<tr><th>{_e(label)}</th><td>{cell}</td></tr>")
    return f'<table class="summary"><tbody>{"".join(body)}</tbody></table>'


def _pipeline_html(data: ReportData) -> str:
    """The job's pipeline (components and params) and its retry/resume history."""
    from curator_worker.store.history import describe_history, pipeline_params, pipeline_summary

    if not data.spec:
        return '<p class="muted">No pipeline recorded.</p>'
    rows = [[_e(role), _e(name),
             _e(", ".join(f"{k}={v!r}" for k, v in params.items()) or "–")]
            for role, name, params in pipeline_params(data.spec)]
    out = (f'<p class="pipeline">{_e(pipeline_summary(data.spec))}</p>'
           + _table(["role", "class", "params"], rows))
    out += "<h3>History</h3>"
    events = [f"{_utc(data.status.created)}: submitted"]
    events += [describe_history(e) for e in data.history]
    out += "<ul class=\"history\">" + "".join(f"<li>{_e(e)}</li>" for e in events) + "</ul>"
    return out


def _failures_html(data: ReportData) -> str:
    if not data.failures:
        return '<p class="muted">No failed indices.</p>'
    rows = []
    for index, error in list(data.failures.items())[:MAX_FAILURE_ROWS]:
        tries = error.get("tries", 1)
        traceback = str(error.get("traceback") or "")
        message = _e(_first_line(error.get("message")))
        if traceback:
            message += (f"<details><summary>traceback</summary><pre>{_e(traceback)}</pre>"
                        "</details>")
        rows.append([_e(index), _e(error.get("kind", "")), _e(error.get("type", "")), message,
                     _e(f"{error.get('attempt', 1)}/{tries}"), _e(error.get("host", ""))])
    table = _table(["index", "kind", "type", "message (first line)", "attempt/tries", "host"],
                   rows, numeric=(0, 4))
    more = len(data.failures) - MAX_FAILURE_ROWS
    if more > 0:
        table += (f'<p class="muted">… and {more} more failed indices: '
                  f'curator-jobs failures {_e(data.status.job_id)}</p>')
    return table


def render_html(data: ReportData, charts: Mapping[str, bytes]) -> str:
    """The report page, with ``charts`` embedded as base64 ``data:`` URIs.

    Parameters
    ----------
    data : ReportData
        The job.
    charts : Mapping[str, bytes]
        File name to PNG data (:func:`render_charts`).

    Returns
    -------
    str
        A complete HTML document; it references no other file.
    """
    s = data.status
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Job report {_e(s.job_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Job {_e(s.job_id)}</h1>",
        f'<p class="muted">Report generated {_e(_utc(data.generated))} by curator-worker.</p>',
    ]
    if data.is_running:
        parts.append(
            f'<p class="banner"><strong>This job is still {_e(s.state)}.</strong> The report '
            f"is a snapshot taken at {_e(_utc(data.generated))}: counts and charts cover the "
            f"{_e(s.committed_batches)} of {_e(s.n_batches)} batches committed so far.</p>")
    if s.error:
        parts.append(f'<p class="error"><strong>Job error:</strong> {_e(s.error)}</p>')
    parts += ["<h2>Summary</h2>", _summary_html(data), "<h2>Pipeline</h2>",
              _pipeline_html(data), "<h2>Charts</h2>"]
    for name in CHART_FILES:
        if name not in charts:
            continue
        encoded = base64.b64encode(charts[name]).decode("ascii")
        parts.append(
            f'<figure id="{_e(name.removesuffix(".png"))}">'
            f'<img src="data:image/png;base64,{encoded}" alt="{_e(name)}" '
            f'width="{CHART_WIDTH_PX}" height="{CHART_HEIGHT_PX}">'
            f"<figcaption>{_e(_CAPTIONS.get(name, name))} ({_e(name)})</figcaption></figure>")
    workers = _worker_rows(data)
    parts.append("<h2>Worker processes</h2>")
    parts.append(_table(["lane (node pid)", "node", "host", "pid", "batches", "indices",
                         "busy", "redelivered batches"], workers, numeric=(3, 4, 5, 6, 7))
                 if workers else '<p class="muted">No committed batches yet.</p>')
    parts += [f"<h2>Failures ({_e(len(data.failures))})</h2>", _failures_html(data),
              "</body></html>"]
    return "\n".join(parts) + "\n"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(job: Job, out_dir: str | Path) -> Path:
    """Write ``report.html`` and the PNG charts of ``job`` into ``out_dir``.

    Parameters
    ----------
    job : Job
        The job (finished or still running: the page then says it is a snapshot).
    out_dir : str or Path
        Folder to write into; created if missing. Existing report files are replaced.

    Returns
    -------
    Path
        The HTML page. It embeds the charts, so it can be moved or mailed on its own;
        ``timeline.png``, ``stages.png``, ``throughput.png`` and ``slowest.png`` are
        written next to it as well.

    Raises
    ------
    JobNotFoundError
        If the job does not exist (or expired).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = ReportData.from_job(job)
    charts = render_charts(data)
    for name, png in charts.items():
        _write_atomic(out / name, png)
    page = out / REPORT_NAME
    _write_atomic(page, render_html(data, charts).encode("utf-8"))
    log.info("job %s: report written to %s (%s, %d indices with metrics, %d batches)",
             job.job_id, page, data.status.state, len(data.metrics), len(data.batches))
    return page
