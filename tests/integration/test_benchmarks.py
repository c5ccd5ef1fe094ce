"""The benchmark scripts run (tiny sizes, one round) and write the results they document.

They assert no times: this only keeps them from rotting. Each starts its own Redis and
worker node and stops them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_benchmark(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_compare_measures_ours_against_the_pool(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    done = run_benchmark("compare.py", "--workloads", "W_tiny", "--runners",
                         "loop,ppe,loky_batched,ours,ours_cold", "--rounds", "2", "--seed", "3",
                         "--no-embedded", "--out", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    runners = results["workloads"]["W_tiny"]["runners"]
    assert set(runners) == {"loop", "ppe", "loky_batched", "ours", "ours_cold"}
    for row in runners.values():
        assert row["wall_min_s"] <= row["wall_s"] <= row["wall_max_s"]
        assert len(row["walls_s"]) == 2
    assert runners["ours"]["x_ppe"] > 0 and runners["ours_cold"]["x_ppe"] > 0
    low, high = runners["ours"]["x_ppe_min_max"]
    assert low <= runners["ours"]["x_ppe"] <= high
    assert results["workloads"]["W_tiny"]["ideal_cpu_s"] > 0  # the loop ran in a child
    # a random order per round, recorded with its seed, and the commit measured
    assert results["config"]["seed"] == 3 and len(results["orders"]) == 2
    assert all(sorted(o) == sorted(runners) for o in results["orders"])
    assert len(results["commit"] or "") == 40
    goal = results["targets"]["W_tiny first job <= 1.5 x PPE per item"]
    assert goal["value"] is not None and goal["limit"] == 1.5
    assert "Issue 19 goals" in done.stdout


def test_compare_celery_baselines_give_the_loop_outputs(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    run_benchmark("compare.py", "--workloads", "W_io", "--items", "8", "--runners",
                  "naive,tuned,chord_min,ours_noevents", "--rounds", "1", "--no-embedded",
                  "--out", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    runners = results["workloads"]["W_io"]["runners"]
    # outputs checked in-script; each baseline on its own broker and worker
    assert {"naive", "tuned", "chord_min", "ours_noevents"} <= set(runners)
    empty = results["empty_chord_s"]  # chord_min times an empty chord too
    assert 0 < empty["min"] <= empty["median"] <= empty["max"]


@pytest.mark.parametrize("workload", ["W_io", "W_cpu"])
def test_scale_prints_a_speedup_per_worker_count(tmp_path: Path, workload: str) -> None:
    out = tmp_path / "scale.json"
    run_benchmark("scale.py", "--workload", workload, "--counts", "1,2", "--rounds", "1",
                  "--items", "8", "--ppe", "--out", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    assert results["workload"] == workload
    assert [row["workers"] for row in results["rows"]] == [1, 2]
    assert all(row["speedup"] > 0 and row["ppe_speedup"] > 0 for row in results["rows"])
    assert results["ppe_chunksize"] == "ceil(items / workers)" and results["commit"]


def test_enqueue_reports_rates_and_a_big_submit(tmp_path: Path) -> None:
    out = tmp_path / "enqueue.json"
    run_benchmark("enqueue.py", "--tasks", "300", "--slow-tasks", "30", "--big", "2000",
                  "--out", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    methods = results["publishing"]["methods"]
    assert {"naive apply_async loop", "group", "ours: template (default)"} <= set(methods)
    assert all(m["tasks_per_s"] > 0 for m in methods.values())
    assert results["big_submit"]["indices"] == 2000 and results["big_submit"]["peak_rss_mb"] > 0


def test_profile_job_reports_cpu_per_process(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    done = run_benchmark("profile_job.py", "--items", "200", "--batch-size", "50", "--seconds",
                         "1", "--out", str(out), cwd=tmp_path)
    assert "worker main" in done.stdout and "pool process 0" in done.stdout
    results = json.loads(out.read_text())
    assert results["jobs"] >= 1 and results["config"]["batch_size"] == 50
    per_job, per_batch = results["cpu_ms_per_job"], results["cpu_ms_per_batch"]
    assert per_job["all"] > 0 and per_batch["all"] == pytest.approx(per_job["all"] / 4,
                                                                    abs=0.01)


def test_million_runs_end_to_end_through_a_delayed_broker(tmp_path: Path) -> None:
    out = tmp_path / "million.json"
    run_benchmark("million.py", "--items", "3000", "--rounds", "1", "--rtt-ms", "1",
                  "--out", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    assert results["config"] == {"items": 3000, "workers": 2, "rtt_ms": 1.0, "rounds": 1,
                                 "task_events": True, "track_metrics": True}
    run = results["runs"][0]
    assert run["wall_s"] > 0.002  # at least the relay's delay, once
    assert run["producer_peak_rss_mb"] > 0 and run["redis_peak_mb"] >= run["redis_before_mb"]


def test_million_without_metrics_is_a_labelled_variant(tmp_path: Path) -> None:
    out = tmp_path / "million.json"
    run_benchmark("million.py", "--items", "2000", "--rounds", "1", "--no-metrics",
                  "--out", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    assert results["config"]["track_metrics"] is False
    assert results["runs"][0]["wall_s"] > 0
