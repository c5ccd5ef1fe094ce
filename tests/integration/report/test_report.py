"""Job reports (``curator_worker.report``) of real jobs run on the test cluster's two nodes."""

from __future__ import annotations

import base64
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from curator_worker.config import Settings
from curator_worker.report import (
    CHART_FILES,
    CHART_HEIGHT_PX,
    CHART_WIDTH_PX,
    REPORT_NAME,
    ReportData,
    lane_label,
    render_charts,
    render_html,
    stage_totals,
    timeline_lanes,
    write_report,
)
from curator_worker.store import CANCELLED, FAILED, PARTIAL, RUNNING, SUCCEEDED, Job, JobStore
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.support.specs import stats_spec

pytestmark = pytest.mark.usefixtures("worker_nodes")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NODES = {"w1@test-host-a", "w2@test-host-b"}  # tests/conftest.py's worker nodes


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, read from its IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path.name} has no IHDR chunk first"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def sleepy_spec(out: Path, count: int, sleep_ms: float = 4.0, **kwargs: Any) -> dict[str, Any]:
    """:func:`stats_spec` whose source sleeps ``sleep_ms`` per index (bars get a width)."""
    spec = stats_spec(out, count, **kwargs)
    spec["source"]["params"]["sleep_ms"] = sleep_ms
    return spec


def run_job(store: JobStore, settings: Settings, spec: dict[str, Any], **kwargs: Any) -> str:
    """Submit ``spec``, wait for the job to end, return its id."""
    job = submit_job(spec, settings, **kwargs)
    wait_for_job(store, job.job_id, settings=settings, progress=False, timeout=120)
    return job.job_id


def check_files(folder: Path, page: Path) -> str:
    """Every chart is a PNG of the chart size, written and embedded; return the page."""
    assert page == folder / REPORT_NAME and page.is_file()
    text = page.read_text(encoding="utf-8")
    for name in CHART_FILES:
        assert png_size(folder / name) == (CHART_WIDTH_PX, CHART_HEIGHT_PX), name
        encoded = base64.b64encode((folder / name).read_bytes()).decode("ascii")
        assert f'src="data:image/png;base64,{encoded}"' in text, f"{name} is not embedded"
    references = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert len(references) == len(CHART_FILES)
    assert all(ref.startswith("data:image/png;base64,") for ref in references), \
        "the page must not reference any other file"
    assert "<script" not in text.lower()
    return text


def failure_row(index: int, error_type: str) -> re.Pattern[str]:
    """The failures table row of ``index`` (kind ``error``)."""
    return re.compile(rf'<tr><td class="num">{index}</td><td>error</td>'
                      rf"<td>{error_type}</td><td>([^<]*)")


def test_report_of_a_partial_job(tmp_path, store, cluster_settings):
    spec = sleepy_spec(tmp_path / "out", 300, fail_indices="7,8")
    job_id = run_job(store, cluster_settings, spec, batch_size=20)
    job = Job(job_id, store)
    assert job.status().state == PARTIAL

    folder = tmp_path / "report"
    text = check_files(folder, write_report(job, folder))

    assert f"<h1>Job {job_id}</h1>" in text
    assert "state-partial" in text and "298 done, 2 failed" in text
    assert "15 of 15 committed" in text
    for index in (7, 8):
        match = failure_row(index, "RuntimeError").search(text)
        assert match, f"no failure row for index {index}"
        assert match.group(1) == f"synthetic failure at index {index}"

    metrics = job.metrics()
    assert {m["node"] for m in metrics} == NODES, "both nodes take batches"
    expected_lanes = {lane_label(m["node"], m["pid"]) for m in metrics}
    assert set(timeline_lanes(job.batches())) == expected_lanes
    for lane in expected_lanes:  # the timeline's lanes are listed in the workers table
        assert f"<td>{lane}</td>" in text
    assert f"{len(expected_lanes)} on 2 node(s): w1@test-host-a, w2@test-host-b" in text
    assert list(stage_totals(metrics)) == ["source", "filter[0]:FieldStats", "sink"]
    assert "still running" not in text


def test_report_escapes_text_from_the_job_store(tmp_path, store, cluster_settings):
    job_id = run_job(store, cluster_settings, stats_spec(tmp_path, 10, fail_indices="3"),
                     batch_size=5)
    data = ReportData.from_job(Job(job_id, store))
    data.failures[3]["message"] = '<img src=x onerror="alert(1)">\nsecond line'
    data.failures[3]["traceback"] = "<b>tb</b>"
    page = render_html(data, {})
    assert "<img src=x" not in page and "<b>tb</b>" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "second line" not in page, "only the message's first line is shown"


def test_redelivered_batches_in_a_running_snapshot(tmp_path, store, cluster_settings):
    job_id = run_job(store, cluster_settings, sleepy_spec(tmp_path, 40), batch_size=10)
    data = ReportData.from_job(Job(job_id, store))
    data.batches[0]["attempt"] = 2  # as if its first worker had died
    data.status.state, data.status.finished = RUNNING, None
    data.status.n_batches += 2
    charts = render_charts(data)
    assert list(charts) == list(CHART_FILES)
    for name, png in charts.items():
        (tmp_path / name).write_bytes(png)
        assert png_size(tmp_path / name) == (CHART_WIDTH_PX, CHART_HEIGHT_PX)
    page = render_html(data, charts)
    assert "This job is still running" in page and "4 of 6 committed" in page
    assert "Finished</th><td>not yet" in page
    assert re.search(r'<td class="num">1</td></tr>', page), "one redelivered batch is listed"


def test_report_without_stage_timings(tmp_path, store, cluster_settings):
    job_id = run_job(store, cluster_settings, sleepy_spec(tmp_path / "out", 60),
                     batch_size=10, options={"metrics": False})
    job = Job(job_id, store)
    assert job.status().state == SUCCEEDED
    metrics = job.metrics()
    assert len(metrics) == 60 and stage_totals(metrics) == {}

    folder = tmp_path / "report"
    text = check_files(folder, write_report(job, folder))
    assert job_id in text and "off (no stage timings)" in text
    assert "No failed indices." in text


def test_report_when_every_index_failed_in_a_single_batch(tmp_path, store, cluster_settings):
    spec = stats_spec(tmp_path / "out", 6, fail_indices="0,1,2,3,4,5")
    job_id = run_job(store, cluster_settings, spec, batch_size=10)
    job = Job(job_id, store)
    assert job.status().state in (PARTIAL, FAILED)
    assert len(job.batches()) == 1

    text = check_files(tmp_path, write_report(job, tmp_path))
    assert "Failures (6)" in text
    for index in range(6):
        assert failure_row(index, "RuntimeError").search(text)


def test_report_of_a_job_still_running(tmp_path, store, cluster_settings):
    queue = f"curator-test-report-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    job = submit_job(stats_spec(tmp_path / "out", 20), cluster_settings, batch_size=5,
                     queue=queue)
    try:
        assert store.status(job.job_id).state == RUNNING
        text = check_files(tmp_path, write_report(Job(job.job_id, store), tmp_path))
        assert "This job is still running" in text
        assert "0 of 4 committed" in text and "No committed batches yet." in text
    finally:
        store.cancel(job.job_id)
        store.client.delete(queue)
    assert store.status(job.job_id).state == CANCELLED
