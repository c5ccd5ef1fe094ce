"""Where a job's time goes: CPU per process, and py-spy profiles of the worker processes.

Runs a benchmark workload (``benchmarks/workloads.py``) repeatedly through
``run_pipeline(backend="celery")`` on a private cluster (a Redis and one prefork worker node
started here) and reports:

- CPU milliseconds per job of each process: the producer (this script), the worker's main
  process, each pool process and Redis;
- with ``--py-spy``, the functions the worker's main and pool processes spend their samples
  in (inclusive and own), from ``py-spy record`` attached to them while the jobs run.
  Samples are wall time of non-idle threads: waiting on Redis shows as ``send``/``recv``.
  Sampling slows the processes down; compare CPU figures from runs without ``--py-spy``.

    .venv/bin/python benchmarks/profile_job.py --items 5000 --seconds 8 --py-spy

Nothing here touches a Redis this script did not start; everything started is stopped by
pid (py-spy processes end by themselves after ``--seconds``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
)

import psutil  # noqa: E402

from benchmarks.workloads import make_pipeline  # noqa: E402
from curator_worker.embedded import LocalCluster  # noqa: E402
from curator_worker.run import run_pipeline  # noqa: E402


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` so far."""
    times = proc.cpu_times()
    return times.user + times.system


def summarize(raw: Path, top: int) -> str:
    """The ``top`` functions of a py-spy ``raw`` (collapsed stacks) file, inclusive and own."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(.*?([^/]+/[^/]+\.py):\d+\)$", r" (\1)", f)
                  for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return "  (no samples)"
    # frames in (nearly) every sample are the process's main loop: not news
    below_loop = [(name, n) for name, n in inclusive.most_common() if n < 0.9 * total]
    lines = [f"  {total} samples; inclusive (below the main loop):"]
    lines += [f"    {100 * n / total:5.1f}%  {name[:110]}" for name, n in below_loop[:top]]
    lines.append("  own:")
    lines += [f"    {100 * n / total:5.1f}%  {name[:110]}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    """Run the jobs, print CPU per process and (``--py-spy``) the profiles."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000, help="indices per job")
    parser.add_argument("--cpu-ms", type=float, default=0.0, help="pure-Python work per index")
    parser.add_argument("--sleep-ms", type=float, default=0.0, help="sleep per index")
    parser.add_argument("--workers", type=int, default=2, help="pool processes")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="indices per batch (default: automatic); small batches show "
                             "the per-batch cost, reported per batch too")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to run jobs")
    parser.add_argument("--py-spy", action="store_true", help="profile the worker processes")
    parser.add_argument("--events", action="store_true",
                        help="task events on (as a deployed cluster; default off)")
    parser.add_argument("--cold", action="store_true",
                        help="every job a spec the cluster has never seen (a user's first job)")
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default benchmarks/results/profile-<UTC>-<commit>"
                             ".json)")
    parser.add_argument("--rate", type=int, default=250,
                        help="py-spy samples per second (sampling costs CPU too)")
    args = parser.parse_args()
    if args.py_spy and not shutil.which("py-spy", path=os.path.dirname(sys.executable)) \
            and not shutil.which("py-spy"):
        parser.error("py-spy is not installed: pip install 'curator-worker[bench]'")

    iterations = 0
    if args.cpu_ms:
        from benchmarks.workloads import calibrate

        iterations = calibrate(args.cpu_ms)
    folder = Path(tempfile.mkdtemp(prefix="curator-profile-"))
    os.environ["CURATOR_TASK_EVENTS"] = "1" if args.events else "0"
    with LocalCluster(workers=args.workers, queue="profile", task_events=args.events) as cluster:
        kwargs = {"broker_url": cluster.settings.broker_url, "queue": "profile", "timeout": 600}
        if args.batch_size:
            kwargs["batch_size"] = args.batch_size
        run_pipeline(make_pipeline(1), backend="celery", n_jobs=args.workers, **kwargs)
        assert cluster.worker is not None and cluster.redis.proc is not None
        main_proc = psutil.Process(cluster.worker.pid)
        procs = {"producer": psutil.Process(), "worker main": main_proc,
                 "redis": psutil.Process(cluster.redis.proc.pid)}
        for n, child in enumerate(main_proc.children()):
            procs[f"pool process {n}"] = child
        spies = []
        if args.py_spy:
            py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy"
            for name, proc in procs.items():
                if name in ("producer", "redis"):
                    continue
                out = folder / f"{name.replace(' ', '-')}.txt"
                spies.append((name, out, subprocess.Popen(
                    [py_spy, "record", "--rate", str(args.rate), "--pid", str(proc.pid), "--format",
                     "raw", "--output", str(out), "--duration", str(int(args.seconds) + 1),
                     "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            time.sleep(1.0)  # py-spy attaches
        before = {name: cpu_seconds(proc) for name, proc in procs.items()}
        jobs = 0
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            pipeline = make_pipeline(args.items, iterations, args.sleep_ms,
                                     salt=jobs + 1 if args.cold else 0)
            run_pipeline(pipeline, backend="celery", n_jobs=args.workers, **kwargs)
            jobs += 1
        wall = time.perf_counter() - started
        after = {name: cpu_seconds(proc) for name, proc in procs.items()}
        for _, _, spy in spies:
            spy.wait(timeout=60)
    print(f"{jobs} jobs of {args.items} indices: {1000 * wall / jobs:.1f} ms wall per job "
          f"({1e6 * wall / jobs / args.items:.1f} µs per index)")
    batches = -(-args.items // args.batch_size) if args.batch_size else 0
    total = 0.0
    cpu_ms: dict[str, float] = {}
    for name in procs:
        spent = 1000 * (after[name] - before[name]) / jobs
        cpu_ms[name] = round(spent, 2)
        total += spent
        per_batch = f"  {spent / batches:6.2f} ms per batch" if batches else ""
        print(f"  {name:16s} {spent:8.1f} ms CPU per job{per_batch}")
    cpu_ms["all"] = round(total, 2)
    per_batch = f"  {total / batches:6.2f} ms per batch" if batches else ""
    print(f"  {'all':16s} {total:8.1f} ms CPU per job{per_batch}")
    profiles = {}
    for name, out, _ in spies:
        profiles[name] = summarize(out, args.top) if out.exists() else "  (no profile written)"
        print(f"\npy-spy, {name}:")
        print(profiles[name])
    from benchmarks.compare import commit_info, default_out, machine_info

    source = commit_info()
    result = {"machine": machine_info(), **source,
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "config": {k: getattr(args, k) for k in ("items", "cpu_ms", "sleep_ms", "workers",
                                                       "batch_size", "seconds", "py_spy",
                                                       "events", "cold")},
              "jobs": jobs, "wall_ms_per_job": round(1000 * wall / jobs, 2),
              "cpu_ms_per_job": cpu_ms,
              "cpu_ms_per_batch": ({k: round(v / batches, 3) for k, v in cpu_ms.items()}
                                   if batches else None),
              "py_spy": profiles}
    out_file = args.out or default_out("profile", source["commit"])
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_file}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
