"""Compare curator-worker's Celery backend with local pools, Dask and naive Celery.

Workloads (``benchmarks/workloads.py``, issue 5): ``W_cpu`` (items of ~20 ms pure-Python
CPU), ``W_tiny`` (no-op items: overhead per item) and ``W_io`` (a 20 ms sleep per item).

Runners, each with ``--workers`` processes (default 2):

=================  ========================================================================
``loop``           a plain ``for`` loop over ``pipeline.run_index`` in a fresh child process
                   (not this one, which also hosts Dask's scheduler): the *ideal* is its
                   wall time / workers; its CPU time / workers is reported beside it
``sequential``     ``run_pipeline(backend="sequential")`` in this process (1 process)
``ppe``            ``ProcessPoolExecutor.map(chunksize=n / (4 * workers))``
``loky``           ``joblib.Parallel(backend="loky")`` (automatic batching)
``loky_batched``   the same with ``batch_size=n / (4 * workers)``
``dask``           ``distributed.LocalCluster`` (1 thread per worker process), ``client.map``
                   over chunks of ``n / (4 * workers)`` indices
``naive``          a separate default-settings Celery app (``benchmarks/naive_celery.py``):
                   ``group`` of one task per item, ``GroupResult.get()``, own Redis and worker
``tuned``          the same app as a competent Celery user would use it: ``task.chunks``
                   of ``n / (4 * workers)`` items in a ``chord``, ``--prefetch-multiplier 1``
``chord_min``      the same app's floor for a chord: one task per worker process running
                   its slice, task events on (``-E``, ``task-sent`` too), as ``ours``: what
                   any runner built on a Celery chord pays at least (no job store, no
                   commits, no metrics)
``ours``           ``run_pipeline(backend="celery")`` against a Redis and a prefork worker
                   node this script starts (``curator_worker.embedded.LocalCluster``) with
                   task events on, as a deployed cluster runs (Flower needs them); the same
                   spec every round, so the spec's cost is known (warm)
``ours_cold``      the same, but every run is a spec the cluster has never seen (a new
                   ``salt`` parameter, same work): a user's first job of a pipeline
``ours_noevents``  ``ours`` with task events off (what the embedded default runs)
``ours_nometrics`` ``ours`` with ``track_metrics`` off: no copy of the per-index records
                   into the local metrics store after the job (its cost, shown apart)
=================  ========================================================================

Pools and clusters are started once and reported separately ("start-up"), and each runner
runs each workload once untimed before the rounds (pools import the workload, ``ours``
learns its cost); ``ours_cold`` alone gets a new spec every run. Runners are interleaved
in rounds, in a new random order each round (``--seed``; the orders are in the JSON), and
the median of the rounds is reported with its min-max: wall time, µs per item, overhead
per item (``(wall - ideal) / n``), ratio to ``ppe`` and to the ideal. On a shared machine the
CPU other programs used during each run is measured (``benchmarks/noise.py``); runs where
it reached ``--noise-limit`` of the machine are left out of the medians (all runs are in
the JSON) and counted in the ``noisy`` column; ``--wait-quiet`` waits for a quiet machine
before each run. Ratios (``x PPE``, ``x ideal``) are medians of same-round ratios, so a
slow round does not pair one runner's fast run with another's slow one. Every run's output is
checked against the plain loop's. The embedded default (``curator-submit`` with no broker
configured: start to first index done) is measured ``--embedded-runs`` times.

Results are kept: without ``--out`` they go to
``benchmarks/results/compare-<UTC time>-<commit>.json`` with the commit and the machine.

    .venv/bin/python benchmarks/compare.py --quick   # a few minutes

Nothing here touches a Redis this script did not start; everything started is stopped by
pid.
"""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import gc
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# Worker processes (loky, Dask, Celery) import the workload module by name.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
)

from benchmarks.noise import CpuMeter, clean_median, wait_quiet  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    WORKLOADS,
    calibrate,
    make_pipeline,
    noop,
    pipeline_spec_json,
    run_chunk,
    run_item,
)
from curator_worker.contract.pipeline import Pipeline  # noqa: E402

RUNNERS = ("loop", "sequential", "ppe", "loky", "loky_batched", "dask", "naive", "tuned",
           "chord_min", "ours", "ours_cold", "ours_noevents", "ours_nometrics")
RESULTS = REPO / "benchmarks" / "results"


class Workload:
    """One workload: its pipeline, spec and the expected output."""

    def __init__(self, name: str, count: int, iterations: int, sleep_ms: float) -> None:
        self.name = name
        self.params = {"count": count, "iterations": iterations, "sleep_ms": sleep_ms}
        self.pipeline = make_pipeline(**self.params)
        self.spec_json = pipeline_spec_json(self.pipeline)
        self.indices = list(range(len(self.pipeline)))
        self.expected: list[list[str]] | None = None

    def salted(self, salt: int) -> Pipeline:
        """The same work as a spec nobody has run yet (``salt`` changes only the spec)."""
        return make_pipeline(**self.params, salt=salt)

    @property
    def n(self) -> int:
        """Number of items."""
        return len(self.indices)


class Runner:
    """A way to run a workload; :meth:`start` returns its start-up seconds."""

    name = ""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def start(self) -> float:
        """Start pools or clusters (timed separately); return the seconds it took."""
        return 0.0

    def run(self, w: Workload) -> list[list[str]]:
        """Run every index of ``w``; return the outputs in index order."""
        raise NotImplementedError

    def measured(self) -> dict[str, float]:
        """What the runner timed itself in its last run (empty: the caller's wall counts)."""
        return {}

    def stop(self) -> None:
        """Stop everything :meth:`start` started."""

    def chunksize(self, w: Workload) -> int:
        """``n / (4 * workers)``: the PPE chunk size of issue 5."""
        return max(1, w.n // (4 * self.workers))


def _loop_child(pipeline: Pipeline, indices: list[int], out: Any) -> None:
    """Body of :class:`LoopRunner`'s child: the loop, its wall and CPU seconds."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    results = [pipeline.run_index(i) for i in indices]
    out.send((results, time.perf_counter() - wall, time.process_time() - cpu))
    out.close()


class LoopRunner(Runner):
    """A plain loop in a fresh child process: the work itself, no framework around it.

    Not in this process: it also hosts Dask's scheduler and the Celery producers, whose
    threads would slow the loop and flatter every runner measured against it.
    """

    name = "loop"

    def run(self, w: Workload) -> list[list[str]]:
        """Run in order in a forked child; keep its wall and CPU time."""
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_loop_child, args=(w.pipeline, w.indices, send))
        child.start()
        send.close()
        results, wall, cpu = receive.recv()
        child.join()
        self._last = {"wall": wall, "cpu": cpu}
        return results

    def measured(self) -> dict[str, float]:
        """The loop's own wall and CPU seconds (without the fork)."""
        return self._last


class SequentialRunner(Runner):
    """``run_pipeline(backend="sequential")``."""

    name = "sequential"

    def run(self, w: Workload) -> list[list[str]]:
        """Run through the project's sequential backend."""
        from curator_worker.run import run_pipeline

        return run_pipeline(w.pipeline, backend="sequential")


class PPERunner(Runner):
    """``ProcessPoolExecutor.map`` with the issue's chunk size (fork context)."""

    name = "ppe"

    def start(self) -> float:
        """Create the pool and spawn every process."""
        begin = time.perf_counter()
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context())
        list(self.pool.map(time.sleep, [0.05] * self.workers))
        return time.perf_counter() - begin

    def run(self, w: Workload) -> list[list[str]]:
        """``map`` in chunks."""
        return list(self.pool.map(partial(run_item, w.spec_json), w.indices,
                                  chunksize=self.chunksize(w)))

    def stop(self) -> None:
        """Shut the pool down without waiting on a process that may never answer.

        (If a pool process was killed from outside, ``shutdown(wait=True)`` can wait on
        the others for ever on Python 3.11.)
        """
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


class LokyRunner(Runner):
    """joblib's default process backend (loky), automatic batching."""

    name = "loky"

    def start(self) -> float:
        """Start joblib's reusable loky executor."""
        from joblib import Parallel, delayed

        begin = time.perf_counter()
        self.parallel = Parallel(n_jobs=self.workers, backend="loky")
        self.parallel(delayed(time.sleep)(0.05) for _ in range(self.workers))
        return time.perf_counter() - begin

    def run(self, w: Workload) -> list[list[str]]:
        """``Parallel(...)(delayed(run_item)(...) for each index)``."""
        from joblib import delayed

        return list(self.parallel(delayed(run_item)(w.spec_json, i) for i in w.indices))

    def stop(self) -> None:
        """Stop loky's workers."""
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


class LokyBatchedRunner(LokyRunner):
    """joblib/loky with an explicit ``batch_size`` of ``n / (4 * workers)`` (tuned)."""

    name = "loky_batched"

    def run(self, w: Workload) -> list[list[str]]:
        """``Parallel(batch_size=...)`` on the same reusable loky executor."""
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=self.workers, backend="loky", batch_size=self.chunksize(w))
        return list(parallel(delayed(run_item)(w.spec_json, i) for i in w.indices))


class DaskRunner(Runner):
    """``distributed.LocalCluster``: one single-threaded worker process per worker."""

    name = "dask"

    def start(self) -> float:
        """Start the scheduler and workers and connect a client."""
        import logging

        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)
        begin = time.perf_counter()
        self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                    processes=True, dashboard_address=None)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(self.workers)
        self.client.run(noop)
        return time.perf_counter() - begin

    def run(self, w: Workload) -> list[list[str]]:
        """``client.map(run_chunk, chunks)`` then gather."""
        size = self.chunksize(w)
        chunks = [w.indices[k : k + size] for k in range(0, w.n, size)]
        futures = self.client.map(run_chunk, [w.spec_json] * len(chunks), chunks, pure=False)
        return [paths for chunk in self.client.gather(futures) for paths in chunk]

    def stop(self) -> None:
        """Close the client and the cluster."""
        self.client.close()
        self.cluster.close()


def _stop_proc(proc: subprocess.Popen[bytes]) -> None:
    from curator_worker.embedded import stop_process

    stop_process(proc, grace=20.0)


class NaiveCeleryRunner(Runner):
    """A default-settings Celery app, one task per item (``benchmarks/naive_celery.py``).

    Each runner has its own Redis, worker and producer app (tasks sent by name): the
    naive, tuned and chord_min runners of one run never share a broker or a setting.
    """

    name = "naive"
    worker_options: tuple[str, ...] = ()

    def start(self) -> float:
        """Start a Redis and a prefork worker of the naive app; wait for a first result."""
        from curator_worker.embedded import RedisServer

        begin = time.perf_counter()
        self.folder = Path(tempfile.mkdtemp(prefix="curator-bench-naive-"))
        self.redis = RedisServer(self.folder)
        self.redis.start()
        from celery import Celery

        self.app = Celery(f"bench_{self.name}", broker=self.redis.url, backend=self.redis.url)
        self.task = self.app.signature("bench.naive_item")
        self.log = open(self.folder / "worker.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "benchmarks.naive_celery", "worker",
             "--pool", "prefork", "--concurrency", str(self.workers), "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip", *self.worker_options],
            env={**os.environ, "BENCH_NAIVE_BROKER": self.redis.url}, cwd=str(REPO),
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        spec = pipeline_spec_json(make_pipeline(1))
        self.task.clone(args=(spec, 0)).delay().get(timeout=60)
        return time.perf_counter() - begin

    def run(self, w: Workload) -> list[list[str]]:
        """``group(one task per item).apply_async().get()``."""
        from celery import group

        result = group((self.task.clone(args=(w.spec_json, i)) for i in w.indices),
                       app=self.app).apply_async()
        return list(result.get(timeout=600))

    def stop(self) -> None:
        """Stop the worker and Redis by pid."""
        _stop_proc(self.proc)
        self.log.close()
        self.app.close()
        self.redis.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class TunedCeleryRunner(NaiveCeleryRunner):
    """The same app used well: ``task.chunks`` in a ``chord``, prefetch of one."""

    name = "tuned"
    worker_options = ("--prefetch-multiplier", "1")

    def run(self, w: Workload) -> list[list[str]]:
        """``chord(naive_item.chunks(items, n / (4 * workers)).group())(flatten.s())``."""
        from celery import chord, chunks

        header = chunks(self.task, ((w.spec_json, i) for i in w.indices), self.chunksize(w),
                        app=self.app).group()
        return list(chord(header, app=self.app)(self.app.signature("bench.flatten"))
                    .get(timeout=600))


class ChordMinRunner(NaiveCeleryRunner):
    """A chord of one task per worker process (each its slice), task events on."""

    name = "chord_min"
    worker_options = ("--prefetch-multiplier", "1", "-E")

    #: Empty chords timed after start-up (their latency: what any chord pays per job).
    EMPTY_CHORDS = 30

    def start(self) -> float:
        """Start as the naive app, with ``task-sent`` events from this producer too; then
        time :data:`EMPTY_CHORDS` empty chords (a no-op task per process and a no-op
        callback): :attr:`empty_chord_s`, median and min-max."""
        from celery import chord

        seconds = super().start()
        self.app.conf.task_send_sent_event = True
        nothing = self.app.signature("bench.nothing")
        times = []
        for n in range(self.EMPTY_CHORDS + 5):
            begin = time.perf_counter()
            chord([nothing.clone() for _ in range(self.workers)], app=self.app)(
                nothing.clone()).get(timeout=60)
            if n >= 5:  # the first ones warm connections
                times.append(time.perf_counter() - begin)
        self.empty_chord_s = spread(times, 5)
        return seconds

    def run(self, w: Workload) -> list[list[str]]:
        """``chord(naive_chunk(slice) per process)(flatten.s())``."""
        from celery import chord

        size = -(-w.n // self.workers)
        header = [self.app.signature("bench.naive_chunk",
                                     args=(w.spec_json, w.indices[k : k + size]))
                  for k in range(0, w.n, size)]
        return list(chord(header, app=self.app)(self.app.signature("bench.flatten"))
                    .get(timeout=600))


class OursRunner(Runner):
    """``run_pipeline(backend="celery")`` on a Redis and a worker node started here."""

    name = "ours"
    events = True
    cold = False

    def start(self) -> float:
        """Start the local cluster and run a first one-index job (workers warm)."""
        from curator_worker.embedded import LocalCluster

        begin = time.perf_counter()
        self.cluster = LocalCluster(workers=self.workers, queue=f"bench-{self.name}",
                                    task_events=self.events).start()
        settings = self.cluster.settings
        self.kwargs = {"broker_url": settings.broker_url, "queue": settings.queue,
                       "timeout": 600}
        self.salt = 0
        self._run(make_pipeline(1, salt=-1))
        return time.perf_counter() - begin

    def _run(self, pipeline: Pipeline) -> list[list[str]]:
        from curator_worker.run import run_pipeline

        before = os.environ.get("CURATOR_TASK_EVENTS")
        os.environ["CURATOR_TASK_EVENTS"] = "1" if self.events else "0"  # the producer's
        try:
            return run_pipeline(pipeline, backend="celery", n_jobs=self.workers,
                                **self.kwargs)
        finally:
            if before is None:
                os.environ.pop("CURATOR_TASK_EVENTS", None)
            else:
                os.environ["CURATOR_TASK_EVENTS"] = before

    def run(self, w: Workload) -> list[list[str]]:
        """One job through the Celery backend (submit, chord, wait on the job store)."""
        if self.cold:
            self.salt += 1
            return self._run(w.salted(self.salt))
        return self._run(w.pipeline)

    def stop(self) -> None:
        """Stop the worker node and Redis."""
        self.cluster.stop()


class OursColdRunner(OursRunner):
    """``ours`` where every run is the first job of its spec (a new ``salt``)."""

    name = "ours_cold"
    cold = True


class OursNoEventsRunner(OursRunner):
    """``ours`` with task events off (the embedded default's setting)."""

    name = "ours_noevents"
    events = False


class OursNoMetricsRunner(OursRunner):
    """``ours`` with ``track_metrics`` off (no per-index copy into the local store)."""

    name = "ours_nometrics"

    def run(self, w: Workload) -> list[list[str]]:
        """The warm spec of ``w``, its metrics not recorded locally."""
        pipeline = make_pipeline(**w.params)
        pipeline.track_metrics = False
        return self._run(pipeline)


RUNNER_CLASSES: dict[str, type[Runner]] = {
    cls.name: cls
    for cls in (LoopRunner, SequentialRunner, PPERunner, LokyRunner, LokyBatchedRunner,
                DaskRunner, NaiveCeleryRunner, TunedCeleryRunner, ChordMinRunner, OursRunner,
                OursColdRunner,
                OursNoEventsRunner, OursNoMetricsRunner)
}


def embedded_start(timeout: float = 120.0) -> dict[str, float]:
    """``curator-submit SPEC --wait`` with no broker: seconds to the first output, and total.

    The first index's output file appearing is "first index done" (its commit follows
    within milliseconds).
    """
    from curator_worker.components import NpzPerIndex, SyntheticArrays

    folder = Path(tempfile.mkdtemp(prefix="curator-bench-embedded-"))
    try:
        spec_path = folder / "job.yaml"
        (SyntheticArrays(count=4, seed=1).write(NpzPerIndex(output_dir=str(folder / "out")))
         .save(spec_path))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CURATOR_")}
        env["CURATOR_DB_DIR"] = str(folder / "metrics")
        command = [str(Path(sys.executable).parent / "curator-submit"), str(spec_path), "--wait"]
        begin = time.perf_counter()
        proc = subprocess.Popen(command, env=env, cwd=str(folder), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        first = None
        while proc.poll() is None and time.perf_counter() - begin < timeout:
            if first is None and any((folder / "out").glob("*.npz")):
                first = time.perf_counter() - begin
            time.sleep(0.005)
        proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - begin)))
        total = time.perf_counter() - begin
        if first is None and any((folder / "out").glob("*.npz")):
            first = total
        return {"first_index_done_s": round(first or float("nan"), 3),
                "command_total_s": round(total, 3), "exit_code": proc.returncode}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def paired_ratios(values: list[float], loads: list[float], ref: list[float],
                  ref_loads: list[float], limit: float) -> list[float]:
    """``values[r] / ref[r]`` for each round ``r`` (same round: machine speed drifts), over
    the rounds where both runs were quiet (all rounds when none was)."""
    pairs = list(zip(values, loads, ref, ref_loads, strict=True))
    quiet = [v / r for v, lv, r, lr in pairs if lv < limit and lr < limit and r > 0]
    return quiet or [v / r for v, _, r, _ in pairs if r > 0]


def spread(values: list[float], digits: int = 4) -> dict[str, float]:
    """Median, min and max of ``values``, rounded."""
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


def summarise(walls: dict[str, dict[str, list[float]]],
              foreign: dict[str, dict[str, list[float]]], cpu: dict[str, list[float]],
              workloads: dict[str, Workload], workers: int, limit: float) -> dict[str, Any]:
    """Per workload and runner: median wall (of quiet runs) with min-max, overhead per item,
    and the ratios to PPE and to the ideal, each the median (min-max) of same-round
    ratios."""
    out: dict[str, Any] = {}
    for wname, by_runner in walls.items():
        n = workloads[wname].n
        loads = foreign[wname]
        ideal_runs = [v / workers for v in by_runner.get("loop", [])]
        ideal = clean_median(ideal_runs, loads["loop"], limit)[0] if ideal_runs else None
        cpu_runs = [v / workers for v in cpu.get(wname, [])]
        # The CPU ideal only means something for CPU-bound work (not for sleeps).
        cpu_bound = bool(workloads[wname].params["iterations"])
        rows: dict[str, Any] = {}
        for rname, values in by_runner.items():
            wall, noisy = clean_median(values, loads[rname], limit)
            row: dict[str, Any] = {
                "walls_s": [round(v, 4) for v in values],
                "foreign_load": [round(v, 3) for v in loads[rname]],
                "noisy_runs": noisy,
                "wall_s": round(wall, 4),
                "wall_min_s": round(min(values), 4),
                "wall_max_s": round(max(values), 4),
                "us_per_item": round(wall / n * 1e6, 1),
                "us_per_item_min_max": [round(min(values) / n * 1e6, 1),
                                        round(max(values) / n * 1e6, 1)],
            }
            if ideal_runs:
                ratios = paired_ratios(values, loads[rname], ideal_runs, loads["loop"], limit)
                x_ideal = statistics.median(ratios)
                row["x_ideal"] = round(x_ideal, 4)
                row["x_ideal_min_max"] = [round(min(ratios), 4), round(max(ratios), 4)]
                # overhead from the same-round ratio: (x_ideal - 1) * ideal, per item
                row["overhead_us_per_item"] = round((x_ideal - 1) * (ideal or 0) / n * 1e6, 1)
            if cpu_bound and cpu_runs:
                ratios = paired_ratios(values, loads[rname], cpu_runs, loads["loop"], limit)
                row["x_ideal_cpu"] = round(statistics.median(ratios), 4)
            if "ppe" in by_runner:
                ratios = paired_ratios(values, loads[rname], by_runner["ppe"], loads["ppe"],
                                       limit)
                row["x_ppe"] = round(statistics.median(ratios), 4)
                row["x_ppe_min_max"] = [round(min(ratios), 4), round(max(ratios), 4)]
            rows[rname] = row
        out[wname] = {
            "items": n, "ideal_s": round(ideal, 4) if ideal else None,
            "ideal_cpu_s": (round(clean_median(cpu_runs, loads["loop"], limit)[0], 4)
                            if cpu_runs else None),
            "runners": rows,
        }
    return out


def targets(summary: dict[str, Any], embedded: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 19's goals for ours (None where a needed runner did not run)."""
    def get(w: str, runner: str, key: str) -> float | None:
        return summary.get(w, {}).get("runners", {}).get(runner, {}).get(key)

    firsts = [e["first_index_done_s"] for e in embedded
              if e.get("first_index_done_s") == e.get("first_index_done_s")]  # not NaN
    checks = {
        "W_cpu <= 1.00 x PPE (events on)": (get("W_cpu", "ours", "x_ppe"), 1.00),
        "W_io <= 1.005 x PPE (events on)": (get("W_io", "ours", "x_ppe"), 1.005),
        "W_tiny first job <= 1.5 x PPE per item": (get("W_tiny", "ours_cold", "x_ppe"), 1.5),
        "embedded start to first index <= 1.0 s": (
            round(statistics.median(firsts), 3) if firsts else None, 1.0),
    }
    return {name: {"value": value, "limit": limit,
                   "met": None if value is None else value <= limit}
            for name, (value, limit) in checks.items()}


def _span(row: dict[str, Any], key: str) -> str:
    value, span = row.get(key), row.get(f"{key}_min_max")
    if value is None:
        return "-"
    return f"{value:.3f} ({span[0]:.3f}-{span[1]:.3f})" if span else f"{value:.3f}"


def print_table(summary: dict[str, Any], startup: dict[str, float]) -> None:
    """The results as text tables: medians with min-max over rounds."""
    print("\nStart-up (pools and clusters, once; not in the timed runs):")
    for name, seconds in startup.items():
        print(f"  {name:14s} {seconds:7.3f} s")
    for wname, data in summary.items():
        print(f"\n{wname}: {data['items']} items, ideal {data['ideal_s']} s "
              f"(loop in a child / workers; CPU ideal {data['ideal_cpu_s']} s); medians "
              "(min-max) of quiet runs; ratios of same-round pairs")
        print(f"  {'runner':14s} {'wall s':>22s} {'us/item':>9s} {'x PPE':>22s}"
              f" {'x ideal':>22s} {'noisy':>6s}")
        for rname, row in data["runners"].items():
            wall = f"{row['wall_s']:.3f} ({row['wall_min_s']:.3f}-{row['wall_max_s']:.3f})"
            print(f"  {rname:14s} {wall:>22s} {row['us_per_item']:9.1f} "
                  f"{_span(row, 'x_ppe'):>22s} {_span(row, 'x_ideal'):>22s} "
                  f"{row['noisy_runs']:3d}/{len(row['walls_s'])}")


def commit_info() -> dict[str, Any]:
    """The repository's commit and whether the tree had changes."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "node": platform.node()}


def default_out(name: str, commit: str | None) -> Path:
    """``benchmarks/results/<name>-<UTC time>-<commit>.json``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return RESULTS / f"{name}-{stamp}-{(commit or 'nocommit')[:10]}.json"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, W_cpu and W_io of 200 items")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; quick 2)")
    parser.add_argument("--workers", type=int, default=2, help="processes per runner")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated subset of " + ",".join(WORKLOADS))
    parser.add_argument("--runners", default=",".join(RUNNERS),
                        help="comma-separated subset of " + ",".join(RUNNERS))
    parser.add_argument("--items", type=int, default=None,
                        help="override the item count of W_cpu and W_io")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random runner order (default: random, recorded)")
    parser.add_argument("--no-embedded", action="store_true",
                        help="skip the embedded-default start-up measurement")
    parser.add_argument("--embedded-runs", type=int, default=3,
                        help="times the embedded default's start-up is measured (default 3)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each run wait up to SECONDS for other programs to "
                             "use less than --noise-limit of the machine")
    parser.add_argument("--noise-limit", type=float, default=0.05,
                        help="runs during which other programs used at least this fraction "
                             "of the machine are left out of the medians (default 0.05)")
    parser.add_argument("--out", type=Path,
                        help="write the results as JSON here (default: benchmarks/results/"
                             "compare-<UTC time>-<commit>.json)")
    args = parser.parse_args(argv)
    # metrics stores (track_metrics is on, as users run) in a folder of this run's own,
    # not the user's cache: each job adds its indices' rows
    metrics_dir = tempfile.mkdtemp(prefix="curator-bench-metrics-")
    os.environ["CURATOR_DB_DIR"] = metrics_dir
    atexit.register(shutil.rmtree, metrics_dir, True)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below

    rounds = args.rounds or (2 if args.quick else 5)
    items = args.items or (200 if args.quick else None)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    runner_names = [r for r in args.runners.split(",") if r]
    if "loop" not in runner_names:
        runner_names.insert(0, "loop")  # the ideal
    unknown = set(runner_names) - set(RUNNER_CLASSES)
    if unknown:
        parser.error(f"unknown runners: {', '.join(sorted(unknown))}")
    iterations = calibrate(WORKLOADS["W_cpu"]["cpu_ms"])
    workloads: dict[str, Workload] = {}
    for wname in [w for w in args.workloads.split(",") if w]:
        params = WORKLOADS[wname]
        count = items if items and wname in ("W_cpu", "W_io") else params["count"]
        workloads[wname] = Workload(wname, count, iterations if params["cpu_ms"] else 0,
                                    params["sleep_ms"])
    print(f"{os.cpu_count()} CPUs, {args.workers} workers per runner, {rounds} rounds, "
          f"seed {seed}; W_cpu: {iterations} spin iterations per item (calibrated to "
          f"{WORKLOADS['W_cpu']['cpu_ms']} ms)", flush=True)

    source = commit_info()
    results: dict[str, Any] = {
        "machine": machine_info(), **source,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"workers": args.workers, "rounds": rounds, "quick": args.quick,
                   "seed": seed, "spin_iterations": iterations,
                   "noise_limit": args.noise_limit, "wait_quiet": args.wait_quiet,
                   "items": {w: wl.n for w, wl in workloads.items()}},
    }
    embedded: list[dict[str, Any]] = []
    if not args.no_embedded:
        for _ in range(max(1, args.embedded_runs)):
            embedded.append(embedded_start())
        firsts = [e["first_index_done_s"] for e in embedded]
        results["embedded_default"] = {"runs": embedded, "first_index_done_s": spread(firsts)}
        print(f"Embedded default (curator-submit, no broker): first index done after "
              f"{spread(firsts)['median']} s (min-max {min(firsts)}-{max(firsts)}, "
              f"{len(firsts)} runs)", flush=True)

    runners: list[Runner] = []
    startup: dict[str, float] = {}
    walls: dict[str, dict[str, list[float]]] = {w: {} for w in workloads}
    foreign: dict[str, dict[str, list[float]]] = {w: {} for w in workloads}
    loop_cpu: dict[str, list[float]] = {w: [] for w in workloads}
    orders: list[list[str]] = []
    try:
        for name in runner_names:
            runner = RUNNER_CLASSES[name](args.workers)
            runners.append(runner)
            startup[name] = round(runner.start(), 4)
            print(f"started {name} in {startup[name]:.3f} s", flush=True)
        for w in workloads.values():
            w.expected = LoopRunner(1).run(w)
            for runner in runners:  # one untimed run each: warm pools, known costs
                if runner.run(w) != w.expected:
                    raise RuntimeError(f"{runner.name} gave wrong results on {w.name}")
        for r in range(rounds):
            order = list(runners)
            rng.shuffle(order)
            orders.append([runner.name for runner in order])
            for w in workloads.values():
                for runner in order:
                    gc.collect()
                    if args.wait_quiet:
                        wait_quiet(args.noise_limit, args.wait_quiet)
                    with CpuMeter() as meter:
                        begin = time.perf_counter()
                        got = runner.run(w)
                        wall = time.perf_counter() - begin
                    if got != w.expected:
                        raise RuntimeError(f"{runner.name} gave wrong results on {w.name}")
                    own = runner.measured()
                    walls[w.name].setdefault(runner.name, []).append(own.get("wall", wall))
                    foreign[w.name].setdefault(runner.name, []).append(meter.foreign)
                    if "cpu" in own:
                        loop_cpu[w.name].append(own["cpu"])
            done = ", ".join(f"{w}: " + " ".join(f"{k} {v[-1]:.2f}" for k, v in by.items())
                             for w, by in walls.items())
            print(f"round {r + 1}/{rounds}: {done}", flush=True)
    finally:
        for runner in reversed(runners):
            try:
                runner.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"stopping {runner.name}: {exc!r}", file=sys.stderr)

    ordered = {w: {name: walls[w][name] for name in runner_names if name in walls[w]}
               for w in walls}
    summary = summarise(ordered, foreign, loop_cpu, workloads, args.workers, args.noise_limit)
    results.update(orders=orders, startup_s=startup, workloads=summary,
                   targets=targets(summary, embedded))
    for runner in runners:
        if isinstance(runner, ChordMinRunner):
            results["empty_chord_s"] = runner.empty_chord_s
            print(f"\nAn empty chord ({args.workers} no-op tasks and a no-op callback, task "
                  f"events on), {runner.EMPTY_CHORDS} times: {runner.empty_chord_s['median']} s "
                  f"(min-max {runner.empty_chord_s['min']}-{runner.empty_chord_s['max']})")
    print_table(summary, startup)
    print("\nIssue 19 goals (ours):")
    for name, check in results["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        value = check["value"]
        print(f"  {name:42s} {verdict:12s} ({value if value is not None else '-'})")
    out = args.out or default_out("compare", source["commit"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
