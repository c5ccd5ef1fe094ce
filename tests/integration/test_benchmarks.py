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
    done = run_benchmark("compare.py", "--workloads", "W_tiny", "--runners", "loop,ppe,ours",
                         "--rounds", "1", "--no-embedded", "--out", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    runners = results["workloads"]["W_tiny"]["runners"]
    assert set(runners) == {"loop", "ppe", "ours"}
    assert runners["ours"]["wall_s"] > 0 and runners["ours"]["x_ppe"] > 0
    assert results["targets"]["W_tiny <= 10 us/item end to end"]["value"] is not None
    assert "Issue 5 targets" in done.stdout


@pytest.mark.parametrize("workload", ["W_io", "W_cpu"])
def test_scale_prints_a_speedup_per_worker_count(tmp_path: Path, workload: str) -> None:
    out = tmp_path / "scale.json"
    run_benchmark("scale.py", "--workload", workload, "--counts", "1,2", "--rounds", "1",
                  "--items", "8", "--ppe", "--out", str(out), cwd=tmp_path)
    results = json.loads(out.read_text())
    assert results["workload"] == workload
    assert [row["workers"] for row in results["rows"]] == [1, 2]
    assert all(row["speedup"] > 0 and row["ppe_speedup"] > 0 for row in results["rows"])


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
    done = run_benchmark("profile_job.py", "--items", "200", "--seconds", "1", cwd=tmp_path)
    assert "worker main" in done.stdout and "pool process 0" in done.stdout
