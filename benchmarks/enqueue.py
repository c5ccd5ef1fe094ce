"""Publishing benchmarks: how fast a job's tasks reach Redis, and what a huge job costs.

1. Publishing rate of ``--tasks`` (default 50,000) per-index tasks, nothing consuming:
   a naive ``apply_async`` loop and a ``group`` (a stock Celery app with default
   settings), Celery's ``chord`` (our producer app), and ours: ``batch`` (kombu
   ``Producer.batch``) and ``template`` (pipelined standard envelopes, the default), with
   and without ``task-sent`` events. Redis memory per queued per-index task is measured.
2. Submitting a ``--big`` (default 1,000,000) index job with ``submit_job`` in a fresh
   subprocess: wall time split into planning, writing the job and publishing, the
   producer's peak RSS, and the Redis memory per queued batch (queue message, job store).

Run from the repository root::

    .venv/bin/python benchmarks/enqueue.py [--quick] [--out enqueue.json]

It starts its own Redis server (never the system one) and stops it by pid.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402
from celery import Celery, group  # noqa: E402

from benchmarks.noise import CpuMeter  # noqa: E402
from benchmarks.workloads import make_pipeline  # noqa: E402
from curator_worker.config import Settings  # noqa: E402
from curator_worker.contract.planning import Batch  # noqa: E402
from curator_worker.contract.spec import pipeline_to_spec  # noqa: E402
from curator_worker.embedded import RedisServer  # noqa: E402
from curator_worker.messaging import RUN_BATCH, create_app  # noqa: E402
from producer.publish import publish_chord  # noqa: E402

JOB_ID = "bench-enqueue"


def used_memory(client: redis.Redis) -> int:
    """Redis ``used_memory`` in bytes."""
    return int(client.info("memory")["used_memory"])


def per_index_batches(n: int) -> list[Batch]:
    """``n`` per-index batches (``--batch-size 1``)."""
    return [Batch(f"b{i:06d}", [i]) for i in range(n)]


def drop(client: redis.Redis, queue: str) -> None:
    """Delete a queue and Celery's chord keys left by a run."""
    client.delete(queue)
    for key in client.scan_iter("celery-taskset-meta-*", count=1000):
        client.delete(key)


def rate_naive(url: str, queue: str, n: int) -> float:
    """Seconds to ``apply_async`` ``n`` tasks one by one (stock app, default settings)."""
    app = Celery("bench_naive_producer", broker=url, backend=url, set_as_current=False)
    sig = app.signature(RUN_BATCH)
    start = time.perf_counter()
    for i in range(n):
        sig.apply_async(args=(JOB_ID, f"b{i:06d}", [i]), queue=queue)
    seconds = time.perf_counter() - start
    app.close()
    return seconds


def rate_group(url: str, queue: str, n: int) -> float:
    """Seconds to publish ``group`` of ``n`` tasks (stock app, default settings)."""
    app = Celery("bench_group_producer", broker=url, backend=url, set_as_current=False)
    start = time.perf_counter()
    group(
        app.signature(RUN_BATCH, args=(JOB_ID, f"b{i:06d}", [i]), queue=queue) for i in range(n)
    ).apply_async()
    seconds = time.perf_counter() - start
    app.close()
    return seconds


def rate_ours(settings: Settings, queue: str, n: int, method: str,
              sent_events: bool | None = None) -> tuple[float, str]:
    """Seconds for :func:`producer.publish.publish_chord`; and the method it used."""
    app = create_app(settings)
    batches = per_index_batches(n)
    limit = n if sent_events else 10_000
    start = time.perf_counter()
    done = publish_chord(app, JOB_ID, batches, queue, method=method, sent_events=sent_events,
                         sent_events_limit=limit)
    seconds = time.perf_counter() - start
    app.close()
    return seconds, done.method


def publishing_rates(server: RedisServer, n: int, n_slow: int) -> dict[str, Any]:
    """Section 1: rates of every method, checked by the queue length."""
    settings = Settings(broker_url=server.url, queue="bench-enqueue")
    client = redis.Redis.from_url(server.url)
    runs: list[tuple[str, int, Any]] = [
        ("naive apply_async loop", n_slow, lambda q, k: rate_naive(server.url, q, k)),
        ("group", n_slow, lambda q, k: rate_group(server.url, q, k)),
        ("celery chord (canvas)", n_slow, lambda q, k: rate_ours(settings, q, k, "canvas")[0]),
        ("ours: batch (Producer.batch)", n, lambda q, k: rate_ours(settings, q, k, "batch")[0]),
        ("ours: template (default)", n, lambda q, k: rate_ours(settings, q, k, "auto")[0]),
        ("ours: template + task-sent events", n,
         lambda q, k: rate_ours(settings, q, k, "auto", sent_events=True)[0]),
    ]
    out: dict[str, Any] = {"tasks": n, "methods": {}}
    for name, count, run in runs:
        queue = f"bench-enqueue-{len(out['methods'])}"
        before = used_memory(client)
        with CpuMeter() as meter:
            seconds = run(queue, count)
        queued = client.llen(queue)
        memory = used_memory(client) - before
        if queued != count:
            raise RuntimeError(f"{name}: {queued} messages queued, expected {count}")
        out["methods"][name] = {
            "tasks": count,
            "seconds": round(seconds, 4),
            "tasks_per_s": round(count / seconds, 1),
            "redis_bytes_per_task": round(memory / count, 1),
            "foreign_load": round(meter.foreign, 3),
        }
        print(f"  {name:36s} {count:7d} tasks  {seconds:8.3f} s  {count / seconds:10,.0f} tasks/s"
              f"  {memory / count:7.0f} B/task in Redis  (others used {meter.foreign:.0%} of "
              "the machine)", flush=True)
        drop(client, queue)
    client.close()
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``) in MB.

    Not ``getrusage().ru_maxrss``: Linux keeps that across ``execve``, so a child started
    from a big parent would report the parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def submit_child(url: str, count: int, queue: str) -> None:
    """In a fresh process: submit a ``count``-index job and print its costs as JSON."""
    import producer.submit as submit
    from curator_worker.store import JobStore

    timings: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    submit.check_job = timed("plan", submit.check_job)  # validation, then batch planning
    submit._plan = timed("plan", submit._plan)
    submit.publish_chord = timed("publish", submit.publish_chord)
    JobStore.create_job = timed("write job", JobStore.create_job)
    spec = pipeline_to_spec(make_pipeline(count))
    settings = Settings(broker_url=url, queue=queue)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    job = submit.submit_job(spec, settings, origin="benchmark")
    seconds = time.perf_counter() - start
    print(json.dumps({
        "job_id": job.job_id, "indices": job.total, "batches": job.n_batches,
        "batch_size": job.batch_size, "seconds": seconds,
        "breakdown_s": {k: round(v, 4) for k, v in timings.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_mb": round(rss_before, 1),
    }))


def big_submit(server: RedisServer, count: int) -> dict[str, Any]:
    """Section 2: a ``count``-index job submitted by ``submit_job`` in a subprocess."""
    client = redis.Redis.from_url(server.url)
    queue = "bench-enqueue-big"
    before = used_memory(client)
    done = subprocess.run(
        [sys.executable, __file__, "--_submit-child", str(count), "--_queue", queue],
        env={**os.environ, "PYTHONPATH": str(REPO), "_BENCH_URL": server.url},
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"submit subprocess failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    total = used_memory(client) - before
    n = result["batches"]
    queue_bytes = client.memory_usage(queue, samples=0) or 0
    job_key = f"curator:job:{result['job_id']}"
    batches_bytes = client.memory_usage(f"{job_key}:batches", samples=0) or 0
    result["redis"] = {
        "queued_messages": client.llen(queue),
        "total_bytes": total,
        "bytes_per_batch": round(total / n, 1),
        "queue_bytes_per_batch": round(queue_bytes / n, 1),
        "job_store_bytes_per_batch": round(batches_bytes / n, 1),
        "bytes_per_index": round(total / count, 2),
    }
    drop(client, queue)
    client.close()
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=50_000,
                        help="per-index tasks for the publishing rates (default 50,000)")
    parser.add_argument("--slow-tasks", type=int, default=None,
                        help="tasks for the slow stock methods (default: --tasks; 5,000 quick)")
    parser.add_argument("--big", type=int, default=1_000_000,
                        help="indices of the big submitted job (default 1,000,000; 0 skips)")
    parser.add_argument("--quick", action="store_true", help="fewer tasks for stock methods")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--_submit-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_queue", default="bench-enqueue-big", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    if args._submit_child:
        submit_child(os.environ["_BENCH_URL"], args._submit_child, args._queue)
        return 0
    n_slow = args.slow_tasks or (min(args.tasks, 5000) if args.quick else args.tasks)
    folder = Path(tempfile.mkdtemp(prefix="curator-bench-enqueue-"))
    server = RedisServer(folder)
    server.start()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    try:
        print(f"Publishing rate, per-index tasks (nothing consuming; {os.cpu_count()} CPUs):")
        results["publishing"] = publishing_rates(server, args.tasks, n_slow)
        if args.big:
            print(f"Submitting a {args.big:,}-index job (submit_job in a fresh process):")
            big = big_submit(server, args.big)
            results["big_submit"] = big
            r = big["redis"]
            print(f"  {big['indices']:,} indices in {big['batches']} batches of "
                  f"{big['batch_size']}: {big['seconds']:.2f} s "
                  f"({', '.join(f'{k} {v:.2f} s' for k, v in big['breakdown_s'].items())})")
            print(f"  producer peak RSS {big['peak_rss_mb']:.0f} MB "
                  f"(after imports {big['rss_after_imports_mb']:.0f} MB)")
            print(f"  Redis: {r['bytes_per_batch']:,.0f} B per queued batch "
                  f"(queue message {r['queue_bytes_per_batch']:,.0f} B, job store batch plan "
                  f"{r['job_store_bytes_per_batch']:,.0f} B), {r['bytes_per_index']:.1f} B/index")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
