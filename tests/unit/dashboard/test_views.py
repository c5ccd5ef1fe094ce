"""The dashboard's shaping of job store data: lanes, stages, throughput, cached reads."""

from __future__ import annotations

import time

from curator_worker.dashboard import views
from curator_worker.dashboard.views import (
    JobViews,
    aggregate_commits,
    pipeline_of,
    throughput_series,
)
from curator_worker.store import JobStatus


def _record(node, pid, started, finished, n, attempt=1, stages=None, timed=None):
    return {"node": node, "host": "h", "pid": pid, "started": started, "finished": finished,
            "n": n, "attempt": attempt, "stages": stages or {},
            "stages_timed": n if timed is None else timed, "stages_of": n}


def test_aggregate_commits_lanes_and_stages_in_pipeline_order():
    t0 = 1000.0
    records = [
        _record("w1@a", 11, 1001.0, 1003.0, 4, stages={"sink": 0.5, "source": 1.0}),
        _record("w1@a", 11, 1003.5, 1004.0, 4, attempt=2, stages={"filter[0]:F": 0.25}),
        _record("w2@b", 7, 1001.0, 1002.0, 2, stages={"source": 2.0, "filter[1]:G": 0.1},
                timed=1),
    ]
    agg = aggregate_commits(records, t0)
    assert sorted(agg.lanes) == ["w1@a 11", "w2@b 7"]
    lane = agg.lanes["w1@a 11"]
    assert (lane["batches"], lane["indices"], lane["busy"], lane["redelivered"]) == (
        2, 8, 2.5, 1)
    assert lane["bars"] == [[1.0, 3.0, 4, 1], [3.5, 4.0, 4, 2]]
    assert lane["last_finished"] == 1004.0
    assert list(agg.stages) == ["source", "filter[0]:F", "filter[1]:G", "sink"]
    assert agg.stages["source"] == 3.0
    assert agg.stages_estimated, "a batch timed 1 of its 2 indices"
    assert agg.ends == [(1002.0, 2), (1003.0, 4), (1004.0, 4)]


def test_bars_are_capped_per_lane_keeping_the_latest(monkeypatch):
    monkeypatch.setattr(views, "MAX_BARS", 40)
    records = [_record("w@a", 1, float(i), i + 0.5, 1) for i in range(100)]
    bars = aggregate_commits(records, 0.0).lanes["w@a 1"]["bars"]
    assert len(bars) == 40 and bars[-1][0] == 99.0
    assert aggregate_commits(records, 0.0).lanes["w@a 1"]["batches"] == 100


def test_throughput_series():
    series = throughput_series([(10.5, 4), (10.7, 2), (19.9, 10)], 10.0, 20.0, bins=10)
    assert series["bin_seconds"] == 1.0
    assert series["rates"][0] == 6.0 and series["rates"][-1] == 10.0
    assert sum(series["rates"]) == 16.0


def test_pipeline_of_lists_components_in_order():
    spec = {"source": {"name": "S", "module": "m", "params": {"count": 3}},
            "filters": [{"name": "F", "module": "m"}], "sink": {"name": "K", "module": "m"}}
    assert [(c["role"], c["name"], c["params"]) for c in pipeline_of(spec)] == [
        ("source", "S", {"count": 3}), ("filter", "F", {}), ("sink", "K", {})]


def _status(state="running", committed=1, failed=0):
    return JobStatus(job_id="j", state=state, total=10, done=0, failed=failed, n_batches=5,
                     committed_batches=committed, created=0.0, started=None, finished=None,
                     error=None, queue="q")


def test_cached_reads_follow_counters_but_a_running_job_is_not_read_every_poll():
    cache: dict = {}
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        time.sleep(0.05)
        return len(calls)

    assert JobViews._cached(cache, _status(), (1,), slow) == 1
    assert JobViews._cached(cache, _status(), (1,), slow) == 1, "same counters: cached"
    # counters moved, but the last read cost 50 ms: stale for up to 5 x 50 ms
    assert JobViews._cached(cache, _status(committed=2), (2,), slow) == 1
    time.sleep(0.3)
    assert JobViews._cached(cache, _status(committed=2), (2,), slow) == 2
    # a job that ended is read afresh at once
    assert JobViews._cached(cache, _status("partial", 3), (3,), slow) == 3
    assert JobViews._cached(cache, _status("partial", 3), (3,), slow) == 3
    assert len(calls) == 3


def test_the_rate_tracker_forgets_the_oldest_jobs_beyond_the_cache_size() -> None:
    """A dashboard runs for weeks: its per-job rate samples must not grow with every job."""
    from curator_worker.dashboard.views import MAX_CACHED_JOBS, _RateTracker

    tracker = _RateTracker()
    for n in range(MAX_CACHED_JOBS + 50):
        tracker.sample(f"job-{n}", 10, now=float(n))
    assert len(tracker._samples) == MAX_CACHED_JOBS
    assert f"job-{MAX_CACHED_JOBS + 49}" in tracker._samples and "job-0" not in tracker._samples
