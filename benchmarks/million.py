"""A million indices end to end: submit, run, gather, every index's paths read back.

No-op items (W_tiny's pipeline) on one worker node of ``--workers`` processes (default 2)
and a private Redis, optionally a network hop away: ``--rtt-ms 1`` puts a relay that adds
half a millisecond each way (``benchmarks/latency_proxy.py``; this kernel has no netem)
between Redis and everyone else (the worker node and the producer). The producer runs in a
fresh child process, so its peak RSS is the job's alone. Reported: wall from
``run_pipeline`` called to the paths returned, the producer's peak RSS, Redis's peak
memory, and Redis's memory after the job.

    .venv/bin/python benchmarks/million.py                  # 1,000,000 indices, no delay
    .venv/bin/python benchmarks/million.py --rtt-ms 1       # the same, 1 ms RTT to Redis

Results are kept under ``benchmarks/results/`` (or ``--out``). Nothing here touches a Redis
this script did not start; everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
)

import redis  # noqa: E402

from benchmarks.compare import commit_info, default_out, machine_info  # noqa: E402
from benchmarks.latency_proxy import DelayProxy  # noqa: E402
from benchmarks.scale import start_node  # noqa: E402
from benchmarks.workloads import make_pipeline  # noqa: E402
from curator_worker.config import Settings  # noqa: E402
from curator_worker.embedded import RedisServer, stop_process  # noqa: E402


def producer(url: str, queue: str, items: int, workers: int,
             metrics: bool = True) -> dict[str, Any]:
    """The child's part: one job of ``items`` no-op indices; wall and peak RSS.

    ``metrics``: the pipeline's ``track_metrics`` (on, as a user gets it: every index's
    record is then copied into the local metrics store after the job)."""
    from curator_worker.run import run_pipeline

    pipeline = make_pipeline(items)
    pipeline.track_metrics = metrics
    begin = time.perf_counter()
    paths = run_pipeline(pipeline, backend="celery", n_jobs=workers,
                         broker_url=url, queue=queue, timeout=1800)
    wall = time.perf_counter() - begin
    if len(paths) != items or paths[-1] != [f"{items - 1}:{items - 1}"]:
        raise RuntimeError("wrong paths read back")
    return {"wall_s": round(wall, 3),
            "producer_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 1024, 1)}


def one_run(items: int, workers: int, rtt_ms: float, folder: Path,
            metrics: bool = True) -> dict[str, Any]:
    """Start Redis (and the relay), a worker node, run the producer child; stop all."""
    server = RedisServer(folder)
    server.start()
    proxy = None
    proc = log = None
    try:
        url = server.url
        if rtt_ms > 0:
            proxy = DelayProxy(("127.0.0.1", server.port), rtt_ms / 2000.0).start()
            url = url.replace(f":{server.port}/", f":{proxy.port}/")
        settings = Settings(broker_url=url, queue="bench-million", task_events=True)
        proc, log = start_node(settings, workers, folder)
        direct = redis.Redis.from_url(server.url)
        before = int(direct.info("memory")["used_memory"])
        child = subprocess.run(
            [sys.executable, __file__, "--producer", url, "--items", str(items),
             "--workers", str(workers), *([] if metrics else ["--no-metrics"])],
            capture_output=True, text=True, cwd=str(REPO), timeout=3600,
            # a metrics store of the round's own: a user's cache would grow by a million
            # rows a run, and every later round would insert into a larger store
            env={**os.environ, "CURATOR_DB_DIR": str(folder / "metrics")},
        )
        if child.returncode != 0:
            raise RuntimeError(f"producer failed:\n{child.stderr[-3000:]}")
        row = json.loads(child.stdout.strip().splitlines()[-1])
        memory = direct.info("memory")
        row.update(redis_peak_mb=round(int(memory["used_memory_peak"]) / 2**20, 1),
                   redis_before_mb=round(before / 2**20, 1),
                   redis_after_mb=round(int(memory["used_memory"]) / 2**20, 1))
        direct.close()
        return row
    finally:
        if proc is not None:
            stop_process(proc, grace=20.0)
        if log is not None:
            log.close()
        if proxy is not None:
            proxy.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="indices (1,000,000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="round-trip time added between Redis and everyone (0)")
    parser.add_argument("--rounds", type=int, default=3, help="runs, each on a fresh cluster")
    parser.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/)")
    parser.add_argument("--no-metrics", action="store_true",
                        help="track_metrics off (a labelled variant: no copy of every index's "
                             "record into the local metrics store after the job)")
    parser.add_argument("--producer", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.producer:
        print(json.dumps(producer(args.producer, "bench-million", args.items, args.workers,
                                  metrics=not args.no_metrics)))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        folder = Path(tempfile.mkdtemp(prefix="curator-bench-million-"))
        try:
            runs.append(one_run(args.items, args.workers, args.rtt_ms, folder,
                                metrics=not args.no_metrics))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"round {r + 1}/{args.rounds}: {runs[-1]}", flush=True)

    def span(key: str) -> dict[str, float]:
        values = [run[key] for run in runs]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    summary = {key: span(key) for key in ("wall_s", "producer_peak_rss_mb", "redis_peak_mb")}
    source = commit_info()
    label = f"million-rtt{args.rtt_ms:g}ms" + ("-nometrics" if args.no_metrics else "")
    out = args.out or default_out(label, source["commit"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine_info(), **source,
        "config": {"items": args.items, "workers": args.workers, "rtt_ms": args.rtt_ms,
                   "rounds": args.rounds, "task_events": True,
                   "track_metrics": not args.no_metrics},
        "runs": runs, "summary": summary,
    }, indent=2) + "\n")
    for key, value in summary.items():
        print(f"  {key:22s} {value['median']:9.1f} (min-max {value['min']}-{value['max']})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
