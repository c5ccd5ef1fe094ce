"""The report's HTML page: one self-contained file, charts embedded as ``data:`` URIs,
inline CSS, every piece of text from the job store escaped."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from curator_worker.report.charts import CHART_FILES, CHART_HEIGHT_PX, CHART_WIDTH_PX
from curator_worker.report.data import (
    ReportData,
    format_seconds,
    lane_label,
    timeline_lanes,
    utc_text,
)

# --------------------------------------------------------------------------- HTML

#: Name of the HTML page in the output folder.
REPORT_NAME = "report.html"
#: Rows of the failures table (the rest is counted, not listed).
MAX_FAILURE_ROWS = 500

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
        ("Created", utc_text(s.created)),
        ("Started", utc_text(s.started)),
        ("Finished", utc_text(s.finished) if s.finished is not None else "not yet"),
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
    events = [f"{utc_text(data.status.created)}: submitted"]
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
        f'<p class="muted">Report generated {_e(utc_text(data.generated))} by curator-worker.</p>',
    ]
    if data.is_running:
        parts.append(
            f'<p class="banner"><strong>This job is still {_e(s.state)}.</strong> The report '
            f"is a snapshot taken at {_e(utc_text(data.generated))}: counts and charts cover the "
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



