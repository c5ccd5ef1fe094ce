"""Support for ``benchmarks/cluster.py``: the network lab, the delay relay, the file sink.

* :class:`Lab`: Linux network namespaces ("hosts") joined by veth pairs, and processes
  started inside them. Only namespaces and links it creates are touched; addresses exist
  only inside those namespaces. :meth:`Lab.close` stops every process it started (by
  pid), then any process still inside one of its namespaces (by pid: only this lab puts
  processes there), then deletes the namespaces, which deletes their links.
* ``python -m benchmarks.cluster_support relay HOST PORT TARGET_HOST TARGET_PORT ONE_WAY_S``:
  :class:`benchmarks.latency_proxy.DelayProxy` listening on ``HOST:PORT`` (this kernel has
  no ``sch_netem``, so the link delay is added in user space), run inside the Redis
  host's namespace, one per link.
* :class:`FilesSink`: the real sink of ``--sink files``, one file of ``size_kb`` KiB per
  index.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from benchmarks.latency_proxy import DelayProxy
from curator_worker.contract.pipeline import Param, Sink

#: Runs argv[2:] after setting the host name to argv[1] (inside ``unshare --uts``).
_SET_HOSTNAME = (
    "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execvp(sys.argv[2], sys.argv[2:])"
)
NETNS_DIR = Path("/run/netns")


class FilesSink(Sink[int]):
    """Writes ``{output_dir}/{index:07d}.bin`` of ``size_kb`` KiB per index."""

    name = "FilesSink"
    description = "One file of size_kb KiB per index (a real sink for the cluster benchmark)"

    def __init__(self, output_dir: str, size_kb: int = 100) -> None:
        self.output_dir = str(output_dir)
        self.size_kb = int(size_kb)
        self._block: bytes | None = None

    @classmethod
    def params(cls) -> list[Param]:
        """Parameters of a spec."""
        return [Param("output_dir", "Directory of the files", type=str),
                Param("size_kb", "KiB per file", type=int, default=100)]

    def __call__(self, items: Iterator[int], index: int) -> list[str]:
        if self._block is None:
            self._block = bytes(range(256)) * (self.size_kb * 4)
        path = os.path.join(self.output_dir, f"{index:07d}.bin")
        for item in items:
            with open(path, "wb") as out:
                out.write(f"{index}:{item}\n".encode())
                out.write(self._block[: self.size_kb * 1024 - out.tell()])
        return [path]


def _ip(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when a trial one works."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / util-linux)"
    name = f"cwtrial{os.getpid()}{uuid.uuid4().hex[:4]}"
    try:
        added = _ip("netns", "add", name)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` failed: {exc}"
    if added.returncode != 0:
        return f"cannot create network namespaces (`ip netns add`: {added.stderr.strip()})"
    try:
        trial = subprocess.run(
            ["ip", "netns", "exec", name, "unshare", "--uts", sys.executable, "-c",
             _SET_HOSTNAME, "trial-host", "true"],
            capture_output=True, text=True, timeout=20,
        )
        if trial.returncode != 0:
            return f"cannot run a process in a namespace with its own host name: {trial.stderr}"
    finally:
        _ip("netns", "delete", name)
    return None


def _netns_inode_of(pid: int) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/net")  # "net:[4026532301]"
    except OSError:
        return None
    return int(link[5:-1]) if link.startswith("net:[") else None


def processes_in(inodes: set[int]) -> list[int]:
    """Pids of the processes whose network namespace is one of ``inodes``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _netns_inode_of(int(entry)) in inodes:
            found.append(int(entry))
    return found


class Lab:
    """Namespaces, links between them and processes inside them; :meth:`close` undoes all."""

    def __init__(self) -> None:
        self.tag = f"cwc{os.getpid() % 100000}{uuid.uuid4().hex[:3]}"
        self.namespaces: list[str] = []
        self.inodes: dict[str, int] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def host(self, short: str) -> str:
        """Create the namespace of host ``short`` (loopback up); return its name."""
        name = f"{self.tag}-{short}"
        self._check(_ip("netns", "add", name))
        self.namespaces.append(name)
        self.inodes[name] = os.stat(NETNS_DIR / name).st_ino
        self._check(_ip("-n", name, "link", "set", "lo", "up"))
        return name

    def link(self, ns1: str, if1: str, addr1: str, ns2: str, if2: str, addr2: str) -> None:
        """A veth pair created directly inside ``ns1`` and ``ns2``, addressed and up."""
        self._check(_ip("link", "add", "name", if1, "netns", ns1, "type", "veth",
                        "peer", "name", if2, "netns", ns2))
        for ns, ifname, addr in ((ns1, if1, addr1), (ns2, if2, addr2)):
            self._check(_ip("-n", ns, "addr", "add", addr, "dev", ifname))
            self._check(_ip("-n", ns, "link", "set", ifname, "up"))

    def popen(self, ns: str, hostname: str, argv: Sequence[str], env: Mapping[str, str],
              log: Path, cwd: Path, pipes: bool = False) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``ns`` with host name ``hostname``, in a new session.

        ``ip netns exec`` and ``unshare`` exec the command, so the pid is the command's.
        With ``pipes`` its stdin and stdout are pipes (stderr goes to ``log``).
        """
        command = ["ip", "netns", "exec", ns, "unshare", "--uts", sys.executable, "-c",
                   _SET_HOSTNAME, hostname, *argv]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                command, env=dict(env), cwd=str(cwd),
                stdout=subprocess.PIPE if pipes else out,
                stderr=out if pipes else subprocess.STDOUT,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                start_new_session=True)
        self.procs.append(proc)
        return proc

    def leftovers(self) -> dict[str, list]:
        """What is left of this lab: its namespaces still named, processes still inside."""
        names = set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()
        return {"namespaces": sorted(n for n in names if n.startswith(f"{self.tag}-")),
                "processes": processes_in(set(self.inodes.values()))}

    def close(self) -> None:
        """Stop every process started here (by pid), then any process left inside the
        lab's namespaces (by pid), then delete the namespaces."""
        stop_all(self.procs, grace=15.0)
        inodes = set(self.inodes.values())
        deadline = time.monotonic() + 10
        while inodes and time.monotonic() < deadline:
            stray = processes_in(inodes)
            if not stray:
                break
            for pid in stray:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for name in reversed(self.namespaces):
            _ip("netns", "delete", name)
        self.namespaces.clear()

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(done.args)} failed: {done.stderr.strip()}")


def stop_all(procs: Sequence[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
    """SIGTERM to every process (not their groups: a Celery node then shuts down warm and
    stops its own pool), wait up to ``grace`` seconds in all, then SIGKILL each one's
    process group (each was started in its own session)."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def relay_main(argv: list[str]) -> int:
    """``relay HOST PORT TARGET_HOST TARGET_PORT ONE_WAY_S``: relay until SIGTERM."""
    host, port, target_host, target_port, one_way = argv
    proxy = DelayProxy((target_host, int(target_port)), float(one_way),
                       listen=(host, int(port))).start()
    print(f"relay listening on {host}:{proxy.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            signal.pause()
    finally:
        proxy.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["relay"]:
        sys.exit(relay_main(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks.cluster_support relay HOST PORT TARGET PORT ONE_WAY_S")
