"""The report's four charts, drawn with matplotlib's object-oriented API on the Agg canvas
(never ``pyplot``: no display needed, no backend switched in the importing program).

matplotlib is the ``report`` extra: ``pip install 'curator-worker[report]'``.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable
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

from curator_worker.progress import nice_bin_width
from curator_worker.report.data import (
    ReportData,
    format_seconds,
    lane_label,
    plural,
    short_lane,
    stage_display,
    stage_totals,
    time_scale,
    timeline_lanes,
)

#: The chart files, in the order the page shows them.
CHART_FILES = ("timeline.png", "stages.png", "throughput.png", "slowest.png")
#: Size of every chart, in pixels (inches × :data:`CHART_DPI`).
CHART_WIDTH_PX = 1200
CHART_HEIGHT_PX = 500
CHART_DPI = 100
#: Bars in the slowest-indices chart.
SLOWEST_COUNT = 20

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
    ax.set_yticklabels([short_lane(label) if n % step == 0 else ""
                        for n, label in enumerate(lanes)], fontsize=max(size, 6.0))
    pad = max(0.0, (4 - len(lanes)) / 2)  # a lone lane is not a wall of color
    ax.set_ylim(len(lanes) - 0.5 + pad, -0.5 - pad)  # first lane on top
    ax.set_xlim(0, span * 1.02 / scale if span > 0 else 1.0)
    ax.set_xlabel(f"{unit} since the job was created")
    ax.set_ylabel("worker process (node pid)")
    ax.grid(axis="x", alpha=0.3)
    running = " (job still running)" if data.is_running else ""
    batch_count = plural(len(batches), "committed batch", "committed batches")
    lane_count = plural(len(lanes), "worker process", "worker processes")
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
    ax.set_yticks(y, [stage_display(name) for name in names])
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


