"""Scale-out: W_cpu through ``run_pipeline(backend="celery")`` with 1, 2, 4, 8, 14 workers.

For each worker-process count ``w`` (up to ``--max-workers``, default: this machine's
CPU count, so nothing is oversubscribed) a prefork worker node with ``--concurrency w``
is started on a private Redis, warmed up, and W_cpu is run ``--rounds`` times; the median
wall time gives the speedup over the plain sequential loop (a quarter of the items, scaled,
measured in the same rounds)
and the parallel efficiency (speedup / w). ``--ppe`` adds ProcessPoolExecutor with the
same process count for comparison, ``map(chunksize=ceil(n / w))`` (one chunk per
process). On a machine with 16+ cores run it as is; here (2
cores)::

    .venv/bin/python benchmarks/scale.py --max-workers 2 --out scale.json

``--workload W_io`` runs the sleeping workload instead (400 x 20 ms sleeps). Sleeping
processes need no core, so on a small machine it measures what the framework itself costs
at 14 processes (planning, hand-off to the pool, commits, the tail, gather), which is the
part of the 16-core goal this machine can check::

    .venv/bin/python benchmarks/scale.py --workload W_io --out scale-io.json
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
)

from benchmarks.noise import CpuMeter, clean_median, wait_quiet  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    WORKLOADS,
    calibrate,
    make_pipeline,
    pipeline_spec_json,
    run_item,
)
from curator_worker.config import Settings  # noqa: E402
from curator_worker.embedded import RedisServer, stop_process, worker_command  # noqa: E402
from curator_worker.run import run_pipeline  # noqa: E402
from curator_worker.store.keys import NODES_KEY  # noqa: E402

COUNTS = (1, 2, 4, 8, 14)


def start_node(settings: Settings, workers: int, folder: Path) -> Any:
    """A prefork worker node of this project's app with ``workers`` processes, ready."""
    import subprocess

    env = {**os.environ, **settings.environ()}
    name = f"scale{workers}@{platform.node()}"
    log = open(folder / f"worker-{workers}.log", "wb")  # noqa: SIM115 - closed with the node
    proc = subprocess.Popen(
        worker_command(workers, name, settings.queue), env=env, cwd=str(REPO), stdout=log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    # Ready once it is in the live-node registry (what producers size batches by). Not
    # app.control.ping: a ping that times out leaves a BRPOP pending on a pooled connection,
    # and kombu's after-fork clean-up then blocks every forked child (the PPE pool) on it.
    client = redis.Redis.from_url(settings.broker_url)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker node exited; see {folder}")
            if client.hexists(NODES_KEY, name):  # written when the node is ready
                return proc, log
            time.sleep(0.1)
        raise RuntimeError(f"worker node not ready after 60 s; see {folder}")
    finally:
        client.close()


class _PPE:
    """A warm ProcessPoolExecutor that survives one of its processes being killed."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(self.workers)
        list(pool.map(time.sleep, [0.05] * self.workers))
        return pool

    def run(self, spec_json: str, indices: list[int], chunksize: int) -> float | None:
        """Seconds for ``map`` over ``indices``; None when a pool process died meanwhile."""
        t = time.perf_counter()
        try:
            list(self.pool.map(partial(run_item, spec_json), indices, chunksize=chunksize))
        except BrokenProcessPool as exc:
            print(f"  PPE run lost ({exc}); new pool", file=sys.stderr, flush=True)
            self.close()
            self.pool = self._new()
            return None
        return time.perf_counter() - t

    def close(self) -> None:
        """Stop the pool without waiting on a process that may never answer."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=("W_cpu", "W_io"), default="W_cpu",
                        help="W_cpu (default: needs a core per process) or W_io (sleeps: "
                             "measures the framework's own cost at any process count)")
    parser.add_argument("--max-workers", type=int,
                        help="largest worker count to run (default: CPU count for W_cpu, "
                             "no limit for W_io)")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)),
                        help="worker counts to try (default 1,2,4,8,14)")
    parser.add_argument("--items", type=int, default=WORKLOADS["W_cpu"]["count"],
                        help="items (default 400)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per count (median)")
    parser.add_argument("--ppe", action="store_true", help="also run ProcessPoolExecutor")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each round wait up to SECONDS for a quiet machine")
    parser.add_argument("--noise-limit", type=float, default=0.05,
                        help="runs where other programs used this fraction of the machine "
                             "are left out of the medians (default 0.05)")
    parser.add_argument("--out", type=Path,
                        help="write the results as JSON here (default: benchmarks/results/"
                             "scale-<workload>-<UTC time>-<commit>.json)")
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below

    if args.max_workers is None:
        args.max_workers = (os.cpu_count() or 1) if args.workload == "W_cpu" else max(COUNTS)
    counts = [c for c in (int(x) for x in args.counts.split(",")) if c <= args.max_workers]
    skipped = [c for c in (int(x) for x in args.counts.split(",")) if c > args.max_workers]
    workload = WORKLOADS[args.workload]
    iterations = calibrate(workload["cpu_ms"]) if workload["cpu_ms"] else 0
    sleep_ms = workload["sleep_ms"]
    pipeline = make_pipeline(args.items, iterations, sleep_ms)
    spec_json = pipeline_spec_json(pipeline)
    indices = list(range(args.items))
    sample = max(1, args.items // 4)
    cost = f"{workload['cpu_ms']} ms CPU" if iterations else f"a {sleep_ms} ms sleep"
    print(f"{args.workload}: {args.items} items x {cost}; "
          f"{os.cpu_count()} CPUs; worker counts {counts}"
          + (f" (skipped, more than --max-workers: {skipped})" if skipped else ""), flush=True)

    folder = Path(tempfile.mkdtemp(prefix="curator-bench-scale-"))
    server = RedisServer(folder)
    server.start()
    settings = Settings(broker_url=server.url, queue="bench-scale")
    rows: list[dict[str, Any]] = []
    try:
        for workers in counts:
            begin = time.perf_counter()
            proc, log = start_node(settings, workers, folder)
            kwargs = {"broker_url": settings.broker_url, "queue": settings.queue,
                      "timeout": 3600, "n_jobs": workers}
            run_pipeline(make_pipeline(workers, iterations, sleep_ms), backend="celery",
                         **kwargs)
            startup = time.perf_counter() - begin
            loops: list[float] = []
            walls: list[float] = []
            ppes: list[float] = []
            loads: dict[str, list[float]] = {"loop": [], "ours": [], "ppe": []}
            ppe = _PPE(workers) if args.ppe else None
            try:
                for _ in range(args.rounds):
                    if args.wait_quiet:
                        wait_quiet(args.noise_limit, args.wait_quiet)
                    with CpuMeter() as meter:
                        t = time.perf_counter()
                        for i in indices[:sample]:
                            pipeline.run_index(i)
                        loops.append((time.perf_counter() - t) * args.items / sample)
                    loads["loop"].append(meter.foreign)
                    with CpuMeter() as meter:
                        t = time.perf_counter()
                        run_pipeline(pipeline, backend="celery", **kwargs)
                        walls.append(time.perf_counter() - t)
                    loads["ours"].append(meter.foreign)
                    if ppe is not None:
                        with CpuMeter() as meter:
                            # One chunk per process: what a user tuning PPE for a
                            # uniform workload picks (issue 19).
                            seconds = ppe.run(spec_json, indices,
                                              math.ceil(args.items / workers))
                        if seconds is not None:
                            ppes.append(seconds)
                            loads["ppe"].append(meter.foreign)
            finally:
                stop_process(proc, grace=20.0)
                log.close()
                if ppe is not None:
                    ppe.close()
            sequential, _ = clean_median(loops, loads["loop"], args.noise_limit)
            wall, noisy = clean_median(walls, loads["ours"], args.noise_limit)
            row: dict[str, Any] = {
                "workers": workers, "startup_s": round(startup, 3),
                "sequential_s": round(sequential, 3), "wall_s": round(wall, 3),
                "walls_s": [round(w, 3) for w in walls], "noisy_runs": noisy,
                "foreign_load": {k: [round(x, 3) for x in v] for k, v in loads.items()},
                "speedup": round(sequential / wall, 3),
                "efficiency": round(sequential / wall / workers, 3),
            }
            if ppes:
                row["ppe_wall_s"] = round(clean_median(ppes, loads["ppe"], args.noise_limit)[0], 3)
                row["ppe_speedup"] = round(sequential / row["ppe_wall_s"], 3)
            rows.append(row)
            print(f"  {workers:3d} workers: {wall:7.3f} s  speedup {row['speedup']:6.2f}  "
                  f"efficiency {row['efficiency']:5.2f}"
                  + (f"  (PPE {row['ppe_wall_s']:.3f} s, speedup {row['ppe_speedup']:.2f})"
                     if ppes else "")
                  + f"  [node start + warm-up {startup:.2f} s; noisy runs {noisy}/{len(walls)}]",
                  flush=True)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print("\n workers  speedup  efficiency")
    for row in rows:
        print(f" {row['workers']:7d}  {row['speedup']:7.2f}  {row['efficiency']:10.2f}")
    from benchmarks.compare import commit_info, default_out, machine_info

    source = commit_info()
    out = args.out or default_out(f"scale-{args.workload}", source["commit"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine_info(), **source, "ppe_chunksize": "ceil(items / workers)",
        "workload": args.workload, "sleep_ms": sleep_ms, "items": args.items,
        "spin_iterations": iterations, "skipped_counts": skipped,
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
