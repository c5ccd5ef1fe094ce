"""The chaos suite's own cluster and its exactly-once audit.

:class:`ChaosCluster` is a private Redis (append-only file on, fixed port and password, so it
can be restarted with its data) and worker nodes the tests are free to kill. Everything it
starts is stopped by pid. :func:`audit_job` reads a finished job back from the job store and
the output folder and counts what chaos could have broken: lost items, double-counted
items, leftover shards and temp files.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from curator_worker.config import Settings
from curator_worker.embedded import RedisServer
from curator_worker.messaging import create_app
from curator_worker.store import PARTIAL, JobStatus, JobStore
from producer.wait import GATHER_GRACE, resend_gather
from tests.integration.test_celery_jobs import sequential_stats
from tests.support.cluster import REPO, WorkerNode, wait_until_ready
from tests.support.specs import stats_spec

#: Queue of the chaos clusters (each test has its own Redis, so one name is enough).
CHAOS_QUEUE = "chaos"
#: Indices of every chaos job, and indices per batch.
COUNT = 2000
BATCH_SIZE = 20
#: Seconds before an unacknowledged batch comes back; every batch runs well below it.
VISIBILITY_TIMEOUT = 4
#: Upper bound of one job's run, chaos included.
JOB_TIMEOUT = 120.0
BIN = Path(sys.executable).parent
#: Temp files of an atomic write (``curator_worker.atomic``: ``.<name>.<host>-<pid>-<8 hex>.tmp``,
#: and older ``.<name>.<hex>.tmp`` names): what a write killed mid-way leaves behind.
WRITE_TEMP = re.compile(r"^\..+\.(?:[0-9a-f]{8}|[0-9a-f]{32}|[^.]+-\d+-[0-9a-f]{8})\.tmp$")
#: Whether a write killed mid-way may leave its temp file (reported as ``temp_litter``
#: instead of failing). Fixed: gather removes temps whose writer is gone
#: (``test_temp_file_of_a_write_killed_mid_way_is_removed``), so this stays False.
KILLED_WRITES_LEAVE_TEMPS = False


class ChaosCluster:
    """A private Redis and worker nodes that a test may kill, restart and purge.

    Parameters
    ----------
    folder : Path
        Working folder (Redis data and AOF, worker logs).
    visibility_timeout : int
        ``CURATOR_VISIBILITY_TIMEOUT`` of the workers.
    """

    def __init__(self, folder: Path, visibility_timeout: int = VISIBILITY_TIMEOUT) -> None:
        self.folder = folder
        (folder / "redis").mkdir(parents=True, exist_ok=True)
        self.logs = folder / "logs"
        self.logs.mkdir(exist_ok=True)
        self.redis = RedisServer(folder / "redis", appendonly=True)
        self.queue = CHAOS_QUEUE
        self.settings = Settings(broker_url=self.redis.url, queue=self.queue,
                                 visibility_timeout=visibility_timeout)
        self.nodes: list[WorkerNode] = []
        self._names = itertools.count(1)
        self._store: JobStore | None = None

    # -- Redis
    def start(self) -> ChaosCluster:
        """Start Redis."""
        self.redis.start()
        return self

    def restart_redis(self, down_for: float) -> float:
        """Stop Redis by pid (it writes its AOF), wait ``down_for`` s, start it again.

        Same folder, port and password, so the AOF is reloaded. Returns the seconds the
        server was unreachable.
        """
        stopped = time.monotonic()
        self.redis.stop()
        time.sleep(down_for)
        self.redis.start()
        return time.monotonic() - stopped

    @property
    def store(self) -> JobStore:
        """The job store of this cluster (redis-py reconnects after a restart)."""
        if self._store is None:
            self._store = JobStore.from_url(self.settings.effective_job_store_url)
        return self._store

    @property
    def client(self) -> redis.Redis:
        """A raw client of this cluster's Redis."""
        return self.store.client

    def env(self, **extra: str) -> dict[str, str]:
        """``CURATOR_*`` variables of this cluster, plus ``extra``."""
        return {**self.settings.environ(), **extra}

    # -- worker nodes
    def start_nodes(self, count: int = 2, concurrency: int = 2,
                    extra_env: dict[str, str] | None = None) -> list[WorkerNode]:
        """Start ``count`` prefork nodes with fresh names and wait until each answers a ping."""
        names = [f"chaos{next(self._names)}@chaos-host" for _ in range(count)]
        env = self.env(**(extra_env or {}))
        nodes = [WorkerNode(env, name, concurrency, self.queue, self.logs) for name in names]
        self.nodes += nodes
        app = create_app(self.settings)
        try:
            wait_until_ready(app, names, nodes, timeout=60)
        finally:
            app.close()
        return nodes

    @staticmethod
    def pool_children(node: WorkerNode) -> list[psutil.Process]:
        """The prefork pool processes of a live node (children of its main pid)."""
        if node.proc.poll() is not None:
            return []
        try:
            return psutil.Process(node.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def kill_node(self, node: WorkerNode) -> int:
        """SIGKILL a node's main process, then each of its children, by pid; return how many."""
        if node.proc.poll() is not None:
            return 0
        try:
            victims = psutil.Process(node.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            victims = []
        killed = 0
        for pid in [node.proc.pid, *(v.pid for v in victims)]:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        node.proc.wait(timeout=10)
        for victim in victims:
            try:
                victim.wait(timeout=10)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
                pass
        return killed

    def stop_nodes(self, nodes: Iterable[WorkerNode] | None = None) -> None:
        """Warm shutdown of ``nodes`` (default: all), by pid."""
        for node in list(nodes if nodes is not None else self.nodes):
            node.stop()

    def stop(self) -> None:
        """Stop every node this cluster started, then Redis."""
        for node in self.nodes:
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                pass
        if self._store is not None:
            self._store.client.close()
        self.redis.stop()

    def logs_tail(self, n: int = 15) -> str:
        """The end of every node's log, for assertion messages."""
        return "\n".join(f"--- {node.name}\n{node.tail(n)}" for node in self.nodes)


class ChildKiller:
    """A thread that SIGKILLs a random prefork child of ``nodes`` about every ``period`` s.

    The random generator is seeded with ``seed`` (printed in the figures) so a failing run
    can be replayed with the same choice of victims.
    """

    def __init__(self, cluster: ChaosCluster, nodes: Sequence[WorkerNode], seed: int,
                 period: float = 1.0, max_kills: int = 200) -> None:
        self.cluster = cluster
        self.nodes = list(nodes)
        self.rng = random.Random(seed)
        self.period = period
        self.max_kills = max_kills
        self.kills: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-child-killer",
                                        daemon=True)

    def _run(self) -> None:
        while len(self.kills) < self.max_kills:
            if self._stop.wait(self.rng.uniform(0.7 * self.period, 1.3 * self.period)):
                return
            children = [c for n in self.nodes for c in self.cluster.pool_children(n)]
            if not children:
                continue
            victim = self.rng.choice(sorted(children, key=lambda p: p.pid))
            try:
                os.kill(victim.pid, signal.SIGKILL)
                self.kills.append(victim.pid)
            except ProcessLookupError:
                pass

    def __enter__(self) -> ChildKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def chaos_spec(out: Path, count: int = COUNT, *, sleep_ms: float = 10.0,
               **source: Any) -> dict[str, Any]:
    """A stateful pipeline (SyntheticArrays -> FieldStats -> NpzPerIndex) writing under ``out``."""
    spec = stats_spec(out, count, size=8)
    spec["source"]["params"]["sleep_ms"] = sleep_ms
    spec["source"]["params"].update(source)
    return spec


def clean_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with a plain SyntheticArrays and NpzPerIndex: the sequential reference."""
    clean = json.loads(json.dumps(spec))
    clean["source"]["name"] = "SyntheticArrays"
    clean["source"]["module"] = "curator_worker.components.sources"
    keep = {"count", "seed", "size", "sleep_ms"}
    clean["source"]["params"] = {
        k: v for k, v in clean["source"]["params"].items() if k in keep
    }
    clean["source"]["params"]["sleep_ms"] = 0.0
    clean["sink"] = {"name": "NpzPerIndex", "module": "curator_worker.components.sinks",
                     "params": {"output_dir": clean["sink"]["params"]["output_dir"]}}
    return clean


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               poll: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def progress_at_least(store: JobStore, job_id: str, fraction: float) -> Callable[[], bool]:
    """A predicate: at least ``fraction`` of the job's indices have a result."""
    def check() -> bool:
        status = store.status(job_id)
        return status.processed >= fraction * status.total or status.is_final
    return check


def wait_final_or_stalled(cluster: ChaosCluster, job_id: str, timeout: float = JOB_TIMEOUT,
                          quiet_for: float = 3.0) -> tuple[JobStatus, list[str]]:
    """Wait for the job to end, riding out Redis being unreachable, or to stall.

    Stalled: batches not committed while no message is left anywhere to run them (the
    queue and kombu's ``unacked`` hash stay empty for ``quiet_for`` seconds). Returns the
    last status and the batches lost that way (empty when the job ended). Like the
    producer's wait, re-sends gather if every batch is committed but the job does not end.
    """
    store, client = cluster.store, cluster.client
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    committed_since: float | None = None
    status: JobStatus | None = None
    while time.monotonic() < deadline:
        try:
            status = store.status(job_id)
            if status.is_final:
                return status, []
            if status.all_committed:
                committed_since = committed_since or time.monotonic()
                if time.monotonic() - committed_since > GATHER_GRACE:
                    resend_gather(cluster.settings, job_id, cluster.queue)
                    committed_since = time.monotonic()
            idle = not client.llen(cluster.queue) and not client.hlen("unacked")
            lost = sorted(store.uncommitted(job_id)) if idle else []
        except (redis.ConnectionError, redis.TimeoutError):
            quiet_since = None
            time.sleep(0.2)
            continue
        now = time.monotonic()
        if not lost:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet_for:
            return status, lost
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} neither final nor stalled after {timeout:.0f}s: {status}")


def cli(args: list[str], env: dict[str, str], timeout: float = 120,
        ) -> subprocess.CompletedProcess[str]:
    """Run one of the project's commands (``curator-jobs ...``) with ``env``."""
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Audit:
    """What a finished job left: counters, results, files, and the damage figures."""

    job_id: str
    state: str
    total: int
    done: int
    failed: int
    n_results: int
    ok_results: int
    error_results: int
    committed_batches: int
    committed_records: int
    n_batches: int
    redelivered_batches: int
    merged_items: int
    expected_items: int
    stats_identical: bool
    missing_results: list[int] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)
    bad_paths: list[int] = field(default_factory=list)
    bad_content: list[int] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    write_temps: list[str] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def items_lost(self) -> int:
        """Indices that should have succeeded but have no result, file or merged item."""
        return max(len(self.missing_results), len(self.missing_files),
                   self.expected_items - self.merged_items, 0)

    @property
    def items_double_counted(self) -> int:
        """Items counted more than once in the merged stats or in the counters."""
        return max(self.merged_items - self.expected_items, self.done - self.ok_results,
                   self.failed - self.error_results, 0)

    def figures(self) -> dict[str, Any]:
        """The figures printed for a reader of the test output."""
        return {
            "items": self.total,
            "done": self.done,
            "failed": self.failed,
            "items_lost": self.items_lost,
            "items_double_counted": self.items_double_counted,
            "redelivered_batches": self.redelivered_batches,
            "leftovers": len(self.leftovers),
            "temp_litter": len(self.write_temps),
        }


def audit_job(store: JobStore, job_id: str, out: Path, reference: dict[str, Any],
              ok: Sequence[int], sample: int = 40) -> Audit:
    """Read job ``job_id`` back and compare it with a sequential run of ``reference``.

    Parameters
    ----------
    store : JobStore
        The job store.
    job_id : str
        A finished job whose spec writes under ``out``.
    out : Path
        The job's output folder (``stats.json`` and ``arrays/``).
    reference : dict
        A clean spec (no fault injection) of the same data, for the sequential run.
    ok : Sequence[int]
        The indices that must have succeeded; every other index of the job must have failed.
    sample : int
        Output files whose arrays are compared with the sequential run's.
    """
    status = store.status(job_id)
    ok_set = set(ok)
    results = {i: entry for i, (_, entry) in store.result_records(job_id).items()}
    ok_results = sum(1 for r in results.values() if "error" not in r)
    error_results = len(results) - ok_results
    missing = sorted(i for i in ok_set if i not in results or "error" in results[i])
    sink = out / "arrays"
    expected_files = {f"item_{i:08d}.npz" for i in ok_set}
    present = {p.name for p in sink.iterdir() if not WRITE_TEMP.match(p.name)} \
        if sink.is_dir() else set()
    bad_paths = sorted(
        i for i in ok_set if i in results and "error" not in results[i]
        and results[i].get("paths") != [str(sink / f"item_{i:08d}.npz")]
    )
    attempts = store.client.hvals(store.key(job_id, "attempts"))
    committed = store.commit_records(job_id)

    seq_dir = Path(tempfile.mkdtemp(prefix=f"seq-{job_id}-", dir=out.parent))
    reference_bytes = sequential_stats(seq_dir, reference, sorted(ok_set))
    merged_path = out / "stats.json"
    merged = merged_path.read_bytes() if merged_path.exists() else b"{}"
    merged_items = int(json.loads(merged).get("items", 0))

    bad_content = []
    rng = random.Random(job_id)
    for i in rng.sample(sorted(ok_set), min(sample, len(ok_set))):
        mine, theirs = sink / f"item_{i:08d}.npz", seq_dir / "seq-out" / f"item_{i:08d}.npz"
        if not mine.exists():
            continue
        with np.load(mine) as a, np.load(theirs) as b:
            if a.files != b.files or not all(np.array_equal(a[k], b[k]) for k in a.files):
                bad_content.append(i)

    # A partial job keeps its committed shards (for `curator-jobs retry`), and only those.
    kept = {Path(path) for r in committed.values() for path in r.get("shards", {}).values()} \
        if status.state == PARTIAL else set()
    kept_dirs = {d for path in kept for d in (path.parent, path.parent.parent)}
    leftovers, write_temps = [], []
    for p in sorted(out.rglob("*")):
        name = str(p.relative_to(out))
        in_shards = any(part.endswith(".shards") for part in p.relative_to(out).parts[:-1])
        if p in kept or p in kept_dirs:
            continue
        if WRITE_TEMP.match(p.name) and not in_shards:
            write_temps.append(name)
        elif p.name.endswith((".shard", ".tmp")) or p.name.endswith(".shards") or in_shards:
            leftovers.append(name)
    return Audit(
        job_id=job_id, state=status.state, total=status.total, done=status.done,
        failed=status.failed, n_results=len(results), ok_results=ok_results,
        error_results=error_results, committed_batches=status.committed_batches,
        committed_records=len(committed), n_batches=status.n_batches,
        redelivered_batches=sum(1 for a in attempts if int(a) > 1),
        merged_items=merged_items, expected_items=len(ok_set),
        stats_identical=merged == reference_bytes,
        missing_results=missing,
        missing_files=sorted(expected_files - present),
        extra_files=sorted(present - expected_files),
        bad_paths=bad_paths, bad_content=sorted(bad_content), leftovers=leftovers,
        write_temps=write_temps,
        failures={i: f"{e.get('kind')}: {e.get('message', '')[:80]}"
                  for i, e in store.failures(job_id).items()},
    )


def assert_exactly_once(audit: Audit, state: str, failed: dict[int, str] | None = None, *,
                        killed_writers: bool = False) -> None:
    """Every expected index succeeded exactly once; ``failed`` (index -> kind) failed.

    ``killed_writers``: the scenario SIGKILLed worker processes, so temp files of writes
    killed mid-way are tolerated while :data:`KILLED_WRITES_LEAVE_TEMPS` (a known bug) holds.
    """
    failed = failed or {}
    assert audit.state == state, (audit.state, audit.failures)
    assert audit.items_lost == 0, (audit.missing_results[:10], audit.missing_files[:10])
    assert audit.items_double_counted == 0, audit
    # the Lua commit keeps the counters equal to the results hash
    assert (audit.done, audit.failed) == (audit.ok_results, audit.error_results), audit
    assert audit.n_results == audit.total == audit.done + audit.failed, audit
    assert audit.failed == len(failed), audit.failures
    assert sorted(audit.failures) == sorted(failed), audit.failures
    for index, kind in failed.items():
        assert audit.failures[index].startswith(f"{kind}:"), (index, audit.failures[index])
    assert audit.committed_batches == audit.committed_records == audit.n_batches, audit
    # every sink file exists once, with the sequential run's arrays, and results name it
    assert not audit.missing_files and not audit.extra_files, (
        audit.missing_files[:10], audit.extra_files[:10])
    assert not audit.bad_paths and not audit.bad_content, (audit.bad_paths, audit.bad_content)
    assert audit.stats_identical, "merged stats.json differs from the sequential run's"
    assert audit.merged_items == audit.expected_items
    assert not audit.leftovers, f"shards or temp files left behind: {audit.leftovers[:10]}"
    if not (killed_writers and KILLED_WRITES_LEAVE_TEMPS):
        assert not audit.write_temps, f"temp files left behind: {audit.write_temps[:10]}"
