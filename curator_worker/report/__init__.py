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

The parts: :mod:`~curator_worker.report.data` (what the report shows, read once),
:mod:`~curator_worker.report.charts`, :mod:`~curator_worker.report.page` (the HTML).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from curator_worker.report.charts import CHART_FILES, CHART_HEIGHT_PX, CHART_WIDTH_PX, render_charts
from curator_worker.report.data import (
    ReportData,
    lane_label,
    stage_totals,
    timeline_lanes,
)
from curator_worker.report.page import REPORT_NAME, render_html
from curator_worker.store import Job

log = logging.getLogger(__name__)

__all__ = [
    "CHART_FILES", "CHART_HEIGHT_PX", "CHART_WIDTH_PX", "REPORT_NAME", "ReportData",
    "lane_label", "render_charts", "render_html", "stage_totals", "timeline_lanes",
    "write_report",
]

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

