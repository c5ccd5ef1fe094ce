"""Cluster scale on one machine: Redis a network hop away from 4-8 worker hosts.

The "hosts" are Linux network namespaces this script creates (root and iproute2 needed;
otherwise it prints one line and exits 2): Redis runs in one (``r``), worker nodes in
``--hosts`` others (``h1``...), and the producer in one more (``login``). Each host has its
own veth link to ``r`` and its own host name. Every host's traffic to Redis crosses a delay
relay inside ``r`` (``benchmarks/latency_proxy.py``, one per link: this kernel has no
``sch_netem``), which adds ``--rtt-ms / 2`` each way (default 1 ms RTT); with ``--rtt-ms 0``
there is no relay and Redis listens on ``r``'s link addresses. The producer's measured
``PING`` time is in the results.

Workload W_io: ``--items`` indices that sleep ``--item-ms`` each (sleeps need no core, so a
2-core machine can host 64 worker processes), with ``--processes`` worker processes in total
spread evenly over the hosts. Runners, each with its own worker nodes on every host, in a
new random order every round:

==========  ==============================================================================
``ours``    ``run_pipeline(backend="celery")`` against that Redis; nodes are this project's
            Celery app (``curator_worker.embedded.worker_command``), task events on
``naive``   ``benchmarks/naive_celery.py`` (default settings): a ``group`` of one task per
            index, ``GroupResult.get()``
``tuned``   the same app used well: ``chunks`` of ``items / (4 * processes)`` in a ``chord``,
            worker ``--prefetch-multiplier 1``
==========  ==============================================================================

``--sink echo`` (default) returns a string per index (no file); ``--sink files`` writes a
100 KiB file per index into a folder every host sees (same file system); ``--sink both``
runs both. Per run the JSON also has the CPU seconds of the whole lab and its parts (relays,
Redis, producer, the runner's node main processes and pool processes, the other runners'
idle nodes) and the share of the machine other programs used (``benchmarks/noise.py``).
Efficiency = ideal / wall, ideal = items x item seconds / processes; every run's outputs
(and files) are checked. Reported per sink, process count and runner: median (min-max)
wall and efficiency over rounds. Results are kept under ``benchmarks/results/`` (or
``--out``), with the commit, the machine and every run.

    .venv/bin/python benchmarks/cluster.py --quick        # ~2 minutes
    .venv/bin/python benchmarks/cluster.py                # 8 hosts, 8-64 processes, ~5 min
    .venv/bin/python benchmarks/cluster.py --sink both    # and the 100 KiB file sink, ~10 min

Nothing here touches a Redis or a process this script did not start: Redis listens only
inside its namespace (and on a private Unix socket for this script), everything started is
stopped by pid, and the namespaces (and their links) are deleted on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
)

RUNNERS = ("ours", "naive", "tuned")
SINKS = ("echo", "files")
REDIS_PORT = 7379  # inside the Redis host's namespace only
RELAY_PORT = 7000  # on each link address of the Redis host
LOGIN = 200  # the producer's link: 10.214.200.0/24
NAIVE_DB = {"naive": 1, "tuned": 2}
#: CPU seconds recorded per run: the whole lab, then its parts.
CPU_KEYS = ("lab_cpu_s", "relay_cpu_s", "redis_cpu_s", "producer_cpu_s", "node_main_cpu_s",
            "pool_cpu_s", "other_runners_nodes_cpu_s")


def subnet(k: int) -> str:
    """The /24 of link ``k`` (host ``h<k>``, or ``LOGIN``); private, inside the lab only."""
    return f"10.214.{k}"


def spread(processes: int, hosts: int) -> list[int]:
    """Processes per host: as even as possible, hosts with none left out at the end."""
    per = [processes // hosts + (1 if k < processes % hosts else 0) for k in range(hosts)]
    return [n for n in per if n > 0]


# -- the producer side (a child process in the ``login`` namespace) ----------------------


def _pipeline(items: int, item_ms: float, sink: str, out_dir: str, file_kb: int) -> Any:
    from benchmarks.cluster_support import FilesSink
    from benchmarks.workloads import BenchItems, Passthrough, make_pipeline

    if sink == "echo":
        return make_pipeline(items, 0, item_ms)
    pipeline = (BenchItems(count=items, sleep_ms=item_ms).filter(Passthrough())
                .write(FilesSink(output_dir=out_dir, size_kb=file_kb)))
    pipeline.track_memory = False
    return pipeline


def _expected(items: int, sink: str, out_dir: str) -> list[list[str]]:
    if sink == "echo":
        return [[f"{i}:{i}"] for i in range(items)]
    return [[os.path.join(out_dir, f"{i:07d}.bin")] for i in range(items)]


def _file_ok(path: str, index: int, file_kb: int) -> bool:
    """The file of ``index`` is there, ``file_kb`` KiB, and starts with its index."""
    try:
        with open(path, "rb") as data:
            head = data.readline()
        return os.path.getsize(path) == file_kb * 1024 and head == f"{index}:{index}\n".encode()
    except OSError:
        return False


class Driver:
    """The producer: runs one job per command, times it, checks its outputs."""

    def __init__(self, base_url: str) -> None:
        from celery import Celery

        self.base_url = base_url
        self.apps = {name: Celery(f"cluster_{name}", broker=f"{base_url}/{db}",
                                  backend=f"{base_url}/{db}")
                     for name, db in NAIVE_DB.items()}

    def run(self, runner: str, processes: int, items: int, item_ms: float, sink: str,
            out_dir: str, file_kb: int) -> dict[str, Any]:
        """One timed job; the wall, and whether outputs (and files) were right."""
        from benchmarks.workloads import pipeline_spec_json

        pipeline = _pipeline(items, item_ms, sink, out_dir, file_kb)
        begin = time.perf_counter()
        if runner == "ours":
            from curator_worker.run import run_pipeline

            got = run_pipeline(pipeline, backend="celery", n_jobs=processes,
                               broker_url=f"{self.base_url}/0", queue=f"cluster-p{processes}",
                               timeout=1800)
        else:
            from celery import chord, chunks, group

            app = self.apps[runner]
            spec_json = pipeline_spec_json(pipeline)
            if runner == "naive":
                result = group((app.signature("bench.naive_item", args=(spec_json, i))
                                for i in range(items)), app=app).apply_async()
            else:
                size = max(1, items // (4 * processes))
                header = chunks(app.signature("bench.naive_item"),
                                ((spec_json, i) for i in range(items)), size, app=app).group()
                result = chord(header, app=app)(app.signature("bench.flatten"))
            got = result.get(timeout=1800)
        wall = time.perf_counter() - begin
        got = [list(paths) for paths in got]
        expected = _expected(items, sink, out_dir)
        outputs = sum(1 for a, b in zip(got, expected, strict=False) if a == b)
        files = 0
        if sink == "files":
            files = sum(1 for i, paths in enumerate(got) if _file_ok(paths[0], i, file_kb))
        ok = len(got) == items and outputs == items and (sink != "files" or files == items)
        return {"wall": wall, "ok": ok, "outputs_ok": outputs, "files_ok": files}

    def ping(self, count: int = 50) -> float:
        """Median milliseconds of a Redis ``PING`` from here (the RTT a producer sees)."""
        import redis

        client = redis.Redis.from_url(f"{self.base_url}/0")
        client.ping()
        times = []
        for _ in range(count):
            begin = time.perf_counter()
            client.ping()
            times.append((time.perf_counter() - begin) * 1000)
        client.close()
        return statistics.median(times)

    def loop(self, items: int, item_ms: float) -> float:
        """Seconds per index of the echo pipeline in a plain loop here (for reference)."""
        pipeline = _pipeline(items, item_ms, "echo", "", 0)
        begin = time.perf_counter()
        for i in range(items):
            pipeline.run_index(i)
        return (time.perf_counter() - begin) / items


def driver_main(base_url: str) -> int:
    """Serve commands (JSON lines on stdin), answer on the original stdout."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log
    driver = Driver(base_url)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["op"] == "ping":
                answer: dict[str, Any] = {"ms": driver.ping()}
            elif command["op"] == "loop":
                answer = {"item_s": driver.loop(command["items"],
                                                                command["item_ms"])}
            else:
                answer = driver.run(**command["args"])
        except Exception as exc:  # noqa: BLE001 - reported to the benchmark, which stops
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer) + "\n")
    return 0


def ask(proc: Any, command: dict[str, Any]) -> dict[str, Any]:
    """Send ``command`` to the driver; its answer (raises on an error or a dead driver)."""
    stdin: IO[bytes] = proc.stdin
    stdin.write((json.dumps(command) + "\n").encode())
    stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError("the producer process exited (see its log)")
    answer = json.loads(line)
    if "error" in answer:
        raise RuntimeError(f"producer: {answer['error']}")
    return answer


# -- the benchmark ----------------------------------------------------------------------


def base_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment for the lab's processes: no CURATOR_*/BENCH_* from the shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CURATOR_", "BENCH_", "CELERY_", "FLOWER_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def tree_cpu() -> float:
    """CPU seconds used so far by this process and everything it started (the whole lab:
    Redis, relays, the producer, worker nodes and their pools)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def wait_until(predicate: Any, timeout: float, what: str, procs: list[Any]) -> None:
    """Poll ``predicate`` until true; fail when ``timeout`` passes or a process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p.pid for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: process(es) {dead} exited (logs in the lab folder)")
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
    """The lab: namespaces, Redis, relays, the producer, and worker nodes per count."""

    def __init__(self, hosts: int, rtt_ms: float, folder: Path) -> None:
        from benchmarks.cluster_support import Lab

        self.hosts = hosts
        self.rtt_ms = rtt_ms
        self.folder = folder
        self.password = secrets.token_hex(16)
        self.lab = Lab()
        self.ns: dict[int, str] = {}
        self.relays: list[Any] = []

    def url(self, k: int) -> str:
        """Redis as host ``k`` reaches it (through its link's relay), without the db."""
        port = RELAY_PORT if self.rtt_ms > 0 else REDIS_PORT
        return f"redis://:{self.password}@{subnet(k)}.1:{port}"

    def start(self) -> Any:
        """Build the network, start Redis and the relays; return the producer process."""
        import redis

        lab = self.lab
        r = lab.host("r")
        for k in [*range(1, self.hosts + 1), LOGIN]:
            self.ns[k] = lab.host("login" if k == LOGIN else f"h{k}")
            lab.link(r, f"l{k}", f"{subnet(k)}.1/24", self.ns[k], "eth0", f"{subnet(k)}.2/24")
        self.sock = self.folder / "redis.sock"
        binds = "127.0.0.1" if self.rtt_ms > 0 else " ".join(
            f"{subnet(k)}.1" for k in self.ns)
        conf = self.folder / "redis.conf"
        conf.write_text(
            f"bind {binds}\nport {REDIS_PORT}\nprotected-mode yes\n"
            f"requirepass {self.password}\nunixsocket {self.sock}\nunixsocketperm 700\n"
            f'dir {self.folder}\nsave ""\nappendonly no\nlogfile {self.folder / "redis.log"}\n'
            "maxclients 10000\n")
        conf.chmod(0o600)
        from curator_worker.embedded import redis_server_binary

        started = [lab.popen(r, "redis-host", [redis_server_binary(), str(conf)], base_env({}),
                             self.folder / "redis.out", self.folder)]
        self.control = {db: redis.Redis(unix_socket_path=str(self.sock), password=self.password,
                                        db=db, socket_timeout=10) for db in (0, 1, 2)}

        def redis_up() -> bool:
            try:
                return bool(self.control[0].ping())
            except (redis.RedisError, OSError):
                return False

        wait_until(redis_up, 20, "Redis", started)
        self.redis_proc = started[0]
        if self.rtt_ms > 0:
            logs = []
            for k in self.ns:
                log = self.folder / f"relay-{k}.log"
                logs.append(log)
                started.append(lab.popen(
                    r, "redis-host",
                    [sys.executable, "-m", "benchmarks.cluster_support", "relay",
                     f"{subnet(k)}.1", str(RELAY_PORT), "127.0.0.1", str(REDIS_PORT),
                     str(self.rtt_ms / 2000.0)],
                    base_env({"PYTHONPATH": str(REPO)}), log, REPO))
            wait_until(lambda: all(p.exists() and b"listening" in p.read_bytes() for p in logs),
                       30, "the delay relays", started)
        self.relays = started[1:]
        driver = lab.popen(self.ns[LOGIN], "login",
                           [sys.executable, str(Path(__file__).resolve()), "--driver",
                            self.url(LOGIN)],
                           base_env({"PYTHONPATH": str(REPO), "CURATOR_TASK_EVENTS": "1"}),
                           self.folder / "producer.log", REPO, pipes=True)
        return driver

    def start_nodes(self, runner: str, processes: int) -> list[Any]:
        """One worker node of ``runner`` per host, ``processes`` in all; wait until ready."""
        from curator_worker.embedded import worker_command
        from curator_worker.store.keys import NODES_KEY

        procs, names = [], []
        for k, concurrency in enumerate(spread(processes, self.hosts), start=1):
            name = f"{runner}{processes}@host{k}"
            names.append(name)
            if runner == "ours":
                argv = worker_command(concurrency, name, f"cluster-p{processes}")
                env = {"CURATOR_BROKER_URL": f"{self.url(k)}/0",
                       "CURATOR_QUEUE": f"cluster-p{processes}", "CURATOR_TASK_EVENTS": "1"}
            else:
                argv = [sys.executable, "-m", "celery", "-A", "benchmarks.naive_celery",
                        "worker", "--pool", "prefork", "--concurrency", str(concurrency),
                        "--hostname", name, "--loglevel", "WARNING", "--without-mingle",
                        "--without-gossip",
                        *(["--prefetch-multiplier", "1"] if runner == "tuned" else [])]
                env = {"BENCH_NAIVE_BROKER": f"{self.url(k)}/{NAIVE_DB[runner]}"}
            env["PYTHONPATH"] = str(REPO)
            procs.append(self.lab.popen(self.ns[k], f"host{k}", argv, base_env(env),
                                        self.folder / f"{runner}{processes}-h{k}.log", REPO))
        if runner == "ours":
            def ready() -> bool:
                return all(self.control[0].hexists(NODES_KEY, n) for n in names)
        else:
            # A Celery node consumes its pidbox (control) queue once its pool is up; kombu
            # records that as a binding of the ``celery.pidbox`` exchange.
            client = self.control[NAIVE_DB[runner]]

            def ready() -> bool:
                bound = b"".join(client.smembers("_kombu.binding.celery.pidbox"))
                return all(f"{n}.celery.pidbox".encode() in bound for n in names)
        wait_until(ready, 240, f"{runner}'s {len(names)} worker nodes", procs)
        return procs

    def service_cpu(self, nodes: dict[str, list[Any]], driver: Any) -> dict[str, float]:
        """CPU seconds used so far by Redis, the delay relays (all links), the producer, and
        per runner by its nodes' main processes (``<runner>_main``) and their pool
        processes (``<runner>_pool``)."""
        import psutil

        def cpu(procs: list[Any], children: bool = False) -> float:
            total = 0.0
            for proc in procs:
                try:
                    parent = psutil.Process(proc.pid)
                    for one in parent.children(recursive=True) if children else [parent]:
                        with contextlib.suppress(psutil.Error):
                            times = one.cpu_times()
                            total += times.user + times.system
                except psutil.Error:
                    pass
            return total

        used = {"redis": cpu([self.redis_proc]), "relays": cpu(self.relays),
                "producer": cpu([driver])}
        for runner, procs in nodes.items():
            used[f"{runner}_main"] = cpu(procs)
            used[f"{runner}_pool"] = cpu(procs, children=True)
        return used

    def close(self) -> dict[str, list]:
        """Stop everything, delete the namespaces; what was left over (should be nothing)."""
        for client in getattr(self, "control", {}).values():
            client.close()
        self.lab.close()
        return self.lab.leftovers()


def summarise(runs: list[dict[str, Any]], counts: list[int],
              runners: list[str]) -> dict[str, Any]:
    """Per sink, process count and runner: median (min-max) of walls and efficiencies."""
    out: dict[str, Any] = {}
    rank = {(c, r): k for k, (c, r) in enumerate((c, r) for c in counts for r in runners)}
    for run in sorted(runs, key=lambda x: rank[(x["processes"], x["runner"])]):
        row = out.setdefault(run["sink"], {}).setdefault(str(run["processes"]), {})
        cell = row.setdefault(run["runner"], {"walls_s": [], "efficiencies": [],
                                              "foreign_load": [],
                                              **{key: [] for key in CPU_KEYS}})
        cell["ideal_s"] = run["ideal_s"]
        cell["items"] = run.get("items")
        cell["walls_s"].append(run["wall_s"])
        cell["efficiencies"].append(run["efficiency"])
        for key in ("foreign_load", *CPU_KEYS):
            cell[key].append(run[key])
    for by_count in out.values():
        for by_runner in by_count.values():
            for row in by_runner.values():
                walls, effs = row["walls_s"], row["efficiencies"]
                row.update(wall_s=round(statistics.median(walls), 4),
                           wall_min_max=[min(walls), max(walls)],
                           efficiency=round(statistics.median(effs), 4),
                           efficiency_min_max=[min(effs), max(effs)],
                           **{f"{key}_median": round(statistics.median(row[key]), 3)
                              for key in CPU_KEYS})
    return out


def goal(summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Issue 19: ours >= 0.90 x ideal at 64 processes on 8 hosts, 1 ms RTT (echo sink)."""
    row = summary.get("echo", {}).get("64", {})
    measured = (config["hosts"] == 8 and config["rtt_ms"] == 1.0 and "ours" in row)
    return {"name": "ours >= 0.90 x ideal at 64 processes on 8 hosts, 1 ms RTT",
            "limit": 0.90,
            "value": row["ours"]["efficiency"] if measured else None,
            "met": (row["ours"]["efficiency"] >= 0.90) if measured else None,
            "items": row["ours"].get("items") if measured else None,
            "beside": {r: row[r]["efficiency"] for r in row if r != "ours"} if measured else {}}


def print_summary(summary: dict[str, Any], config: dict[str, Any]) -> None:
    """Text tables: efficiency and wall, median (min-max) over rounds."""
    for sink, by_count in summary.items():
        what = (f"{config['items_per_process']} items per process"
                if config.get("items_per_process") else f"{config['items']} items")
        print(f"\nsink {sink}: {what} x {config['item_ms']} ms on "
              f"{config['hosts']} hosts, {config['rtt_ms']} ms RTT; median (min-max) of "
              f"{config['rounds']} rounds")
        print(f"  {'processes':>9s} {'runner':7s} {'ideal s':>8s} {'wall s':>24s} "
              f"{'efficiency':>24s}  CPU s: {'lab':>5s} {'relays':>6s} {'Redis':>5s} "
              f"{'prod.':>5s} {'node':>5s} {'pool':>5s}")
        for count, by_runner in by_count.items():
            for runner, row in by_runner.items():
                ideal = row["ideal_s"]
                wall = f"{row['wall_s']:.3f} ({row['wall_min_max'][0]:.3f}-" \
                       f"{row['wall_min_max'][1]:.3f})"
                eff = f"{row['efficiency']:.3f} ({row['efficiency_min_max'][0]:.3f}-" \
                      f"{row['efficiency_min_max'][1]:.3f})"
                print(f"  {count:>9s} {runner:7s} {ideal:8.3f} {wall:>24s} {eff:>24s} "
                      f"       {row['lab_cpu_s_median']:5.2f} {row['relay_cpu_s_median']:6.2f} "
                      f"{row['redis_cpu_s_median']:5.2f} {row['producer_cpu_s_median']:5.2f} "
                      f"{row['node_main_cpu_s_median']:5.2f} {row['pool_cpu_s_median']:5.2f}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=8, help="worker hosts (default 8)")
    parser.add_argument("--processes", default="8,16,32,64",
                        help="total worker processes per step (default 8,16,32,64)")
    parser.add_argument("--rtt-ms", type=float, default=1.0,
                        help="round-trip time added on every link to Redis (default 1)")
    parser.add_argument("--items", type=int, default=None,
                        help="indices (default 1280; --quick 640)")
    parser.add_argument("--items-per-process", type=int, default=None, metavar="N",
                        help="weak scaling: N x processes items at each process count (the "
                             "ideal wall is the same at every count); instead of --items")
    parser.add_argument("--item-ms", type=float, default=20.0, help="sleep per index (20)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--sink", choices=("echo", "files", "both"), default="echo",
                        help="echo (no file: the default), files (a 100 KiB file per index: "
                             "the real-sink variant), both")
    parser.add_argument("--file-kb", type=int, default=100, help="KiB per file (100)")
    parser.add_argument("--runners", default=",".join(RUNNERS),
                        help="comma-separated subset of " + ",".join(RUNNERS))
    parser.add_argument("--quick", action="store_true",
                        help="640 items, 8 and 64 processes, 2 rounds")
    parser.add_argument("--seed", type=int, default=None, help="seed of the runner orders")
    parser.add_argument("--out", type=Path,
                        help="results JSON (default: benchmarks/results/cluster-...json)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the lab's logs (nodes, relays, Redis) here at the end")
    parser.add_argument("--driver", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        return driver_main(args.driver)

    if args.items and args.items_per_process:
        parser.error("--items and --items-per-process exclude each other")
    items = args.items or (640 if args.quick else 1280)
    per_process = args.items_per_process
    rounds = args.rounds or (2 if args.quick else 3)
    sinks = {"echo": ["echo"], "files": ["files"], "both": list(SINKS)}[args.sink]
    try:
        counts = [int(x) for x in (("8,64" if args.quick and args.processes == "8,16,32,64"
                                    else args.processes).split(",")) if x]
    except ValueError:
        parser.error(f"--processes must be comma-separated integers, not {args.processes!r}")
    runners = [r for r in args.runners.split(",") if r]
    if set(runners) - set(RUNNERS) or not runners:
        parser.error(f"--runners: choose from {','.join(RUNNERS)}")
    if not 1 <= args.hosts <= 100 or any(c < 1 for c in counts) or items < 1 or rounds < 1 \
            or (per_process is not None and per_process < 1):
        parser.error("--hosts must be 1-100; --processes, --items, --items-per-process and "
                     "--rounds positive")

    def items_at(processes: int) -> int:
        return per_process * processes if per_process else items
    if args.rtt_ms < 0 or args.item_ms < 0 or args.file_kb < 1:
        parser.error("--rtt-ms and --item-ms must be >= 0 and --file-kb >= 1")

    from benchmarks.cluster_support import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        from curator_worker.embedded import redis_server_binary

        try:
            redis_server_binary()
        except Exception as exc:  # noqa: BLE001 - one line, not a traceback
            reason = f"no redis-server: {exc}"
    if reason is not None:
        print(f"cluster.py skipped: {reason}", file=sys.stderr)
        return 2

    faulthandler.register(signal.SIGUSR1)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))  # run the clean-up below
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    config = {"hosts": args.hosts, "processes": counts, "rtt_ms": args.rtt_ms,
              "items": None if per_process else items, "items_per_process": per_process,
              "item_ms": args.item_ms, "rounds": rounds, "sinks": sinks, "runners": runners,
              "file_kb": args.file_kb, "seed": seed, "quick": args.quick,
              "task_events": {"ours": True, "naive": False, "tuned": False}}
    what = f"{per_process} items per process" if per_process else f"{items} items"
    print(f"{args.hosts} hosts, {args.rtt_ms} ms RTT to Redis, {what} x "
          f"{args.item_ms} ms, processes {counts}, sinks {sinks}, {rounds} rounds, seed {seed}",
          flush=True)

    from benchmarks.compare import commit_info, default_out, machine_info
    from benchmarks.noise import CpuMeter

    folder = Path(tempfile.mkdtemp(prefix="cwcl-"))  # short: the socket path must fit
    shared = folder / "shared"
    shared.mkdir()
    for runner in runners:
        (shared / runner).mkdir()
    cluster = Cluster(args.hosts, args.rtt_ms, folder)
    runs: list[dict[str, Any]] = []
    orders: list[dict[str, Any]] = []
    startup: dict[str, float] = {}
    item_s = rtt_measured = None
    lab: dict[str, Any] = {}
    try:
        driver = cluster.start()
        lab.update(tag=cluster.lab.tag, namespaces=list(cluster.lab.namespaces),
                   netns_inodes=sorted(cluster.lab.inodes.values()))
        print(f"network lab {cluster.lab.tag}: namespaces {' '.join(cluster.lab.namespaces)}",
              flush=True)
        rtt_measured = ask(driver, {"op": "ping"})["ms"]
        print(f"Redis PING from the producer's host: {rtt_measured:.3f} ms (median)",
              flush=True)
        item_s = ask(driver, {"op": "loop", "items": min(items_at(min(counts)), 50),
                              "item_ms": args.item_ms})["item_s"]

        def job(runner: str, processes: int, sink: str) -> dict[str, float]:
            out_dir = shared / runner
            shutil.rmtree(out_dir)
            out_dir.mkdir()
            cpu = cluster.service_cpu(nodes, driver)
            lab_cpu = tree_cpu()
            with CpuMeter() as meter:
                answer = ask(driver, {"op": "run", "args": {
                    "runner": runner, "processes": processes, "items": items_at(processes),
                    "item_ms": args.item_ms, "sink": sink, "out_dir": str(out_dir),
                    "file_kb": args.file_kb}})
            if not answer["ok"]:
                raise RuntimeError(f"{runner} gave wrong outputs ({sink}, {processes} processes)")
            used = {k: v - cpu[k] for k, v in cluster.service_cpu(nodes, driver).items()}
            lab_cpu = tree_cpu() - lab_cpu
            idle = sum(v for k, v in used.items() if k.endswith(("_main", "_pool"))
                       and not k.startswith(f"{runner}_"))
            return {"wall_s": round(float(answer["wall"]), 4),
                    "outputs_ok": answer["outputs_ok"], "files_ok": answer["files_ok"],
                    "foreign_load": round(meter.foreign, 3),
                    "lab_cpu_s": round(lab_cpu, 3), "relay_cpu_s": round(used["relays"], 3),
                    "redis_cpu_s": round(used["redis"], 3),
                    "producer_cpu_s": round(used["producer"], 3),
                    "node_main_cpu_s": round(used[f"{runner}_main"], 3),
                    "pool_cpu_s": round(used[f"{runner}_pool"], 3),
                    "other_runners_nodes_cpu_s": round(idle, 3)}

        for processes in counts:
            nodes: dict[str, list[Any]] = {}
            try:
                for runner in runners:
                    begin = time.perf_counter()
                    nodes[runner] = cluster.start_nodes(runner, processes)
                    for sink in sinks:  # untimed: warm pools; ours learns the spec's cost
                        job(runner, processes, sink)
                    startup[f"{runner}@{processes}"] = round(time.perf_counter() - begin, 2)
                ideal = items_at(processes) * args.item_ms / 1000 / processes
                for r in range(rounds):
                    order = list(runners)
                    rng.shuffle(order)
                    orders.append({"processes": processes, "round": r, "order": order})
                    for sink in sinks:
                        for runner in order:
                            timed = job(runner, processes, sink)
                            runs.append({"processes": processes, "round": r, "sink": sink,
                                         "runner": runner, "items": items_at(processes),
                                         **timed,
                                         "ideal_s": round(ideal, 4),
                                         "efficiency": round(ideal / timed["wall_s"], 4)})
                    mine = [x for x in runs if x["processes"] == processes and x["round"] == r]
                    done = " ".join(f"{x['sink']}/{x['runner']} {x['efficiency']:.3f}"
                                    for x in mine)
                    print(f"{processes} processes, round {r + 1}/{rounds}: efficiency {done} "
                          f"(others' CPU up to {max(x['foreign_load'] for x in mine):.0%} of "
                          "the machine)", flush=True)
            finally:
                from benchmarks.cluster_support import stop_all

                stop_all([proc for procs in nodes.values() for proc in procs])
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        handlers = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in folder.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        leftovers = cluster.close()
        shutil.rmtree(folder, ignore_errors=True)
        lab.update(pids=[p.pid for p in cluster.lab.procs], leftovers=leftovers)
        if leftovers["namespaces"] or leftovers["processes"]:
            print(f"WARNING: left over after clean-up: {leftovers}", file=sys.stderr)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    summary = summarise(runs, counts, runners)
    result = {"machine": machine_info(), **commit_info(),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "config": config, "item_s_measured": round(item_s or 0, 6),
              "ping_ms_measured": round(rtt_measured or 0, 3),
              "startup_s": startup, "orders": orders, "runs": runs, "summary": summary,
              "goal": goal(summary, config), "lab": lab}
    print_summary(summary, config)
    check = result["goal"]
    verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
    beside = ", ".join(f"{k} {v:.3f}" for k, v in check["beside"].items())
    print(f"\nIssue 19 goal: {check['name']}: {verdict} "
          f"({check['value'] if check['value'] is not None else '-'}"
          + (f"; beside it: {beside}" if beside else "") + ")")
    out = args.out or default_out(f"cluster-h{args.hosts}-rtt{args.rtt_ms:g}ms",
                                  result["commit"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: everything was stopped and deleted on the way out
        print("cluster.py interrupted; the lab was cleaned up", file=sys.stderr)
        sys.exit(130)
