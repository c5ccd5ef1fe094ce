"""A private network of Linux network namespaces for tests: "hosts" joined by veth pairs.

Only namespaces and links this module creates are touched; addresses are assigned inside
them only (the 10.213.0.0/16 test range), so no traffic leaves the namespaces. Processes
started in a namespace get their own UTS namespace and host name. :meth:`NetLab.close`
stops the processes (by pid) and deletes the namespaces, which deletes their links.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

# The namespace check, ``ip`` and the host-name launcher are the cluster benchmark's (one
# copy: the benchmark and these tests need the same things of the kernel).
from benchmarks.cluster_support import _SET_HOSTNAME, _ip, unavailable_reason
from curator_worker.embedded import stop_process

__all__ = ["NetLab", "unavailable_reason"]


class NetLab:
    """Namespaces, links between them and processes inside them; :meth:`close` undoes all."""

    def __init__(self) -> None:
        self.tag = f"cw{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def host(self, short: str) -> str:
        """Create the namespace of host ``short``; return its name."""
        name = f"{self.tag}-{short}"
        self._check(_ip("netns", "add", name))
        self.namespaces.append(name)
        self._check(_ip("-n", name, "link", "set", "lo", "up"))
        return name

    def link(self, ns1: str, if1: str, addr1: str, ns2: str, if2: str, addr2: str) -> None:
        """A veth pair created directly inside ``ns1`` and ``ns2`` (never in the host's own
        namespace), addressed and up."""
        self._check(_ip("link", "add", "name", if1, "netns", ns1, "type", "veth",
                        "peer", "name", if2, "netns", ns2))
        for ns, ifname, addr in ((ns1, if1, addr1), (ns2, if2, addr2)):
            self._check(_ip("-n", ns, "addr", "add", addr, "dev", ifname))
            self._check(_ip("-n", ns, "link", "set", ifname, "up"))

    def cut(self, ns: str, ifname: str) -> None:
        """Delete the veth ``ifname`` in ``ns`` (both ends go): the host is cut off."""
        self._check(_ip("-n", ns, "link", "delete", ifname))

    def popen(self, ns: str, hostname: str, argv: Sequence[str], env: Mapping[str, str],
              log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``ns`` with host name ``hostname``, in a new session.

        ``ip netns exec`` and ``unshare`` exec the command, so the pid is the command's.
        """
        command = ["ip", "netns", "exec", ns, "unshare", "--uts", sys.executable, "-c",
                   _SET_HOSTNAME, hostname, *argv]
        with open(log, "ab") as out:
            proc = subprocess.Popen(command, env=dict(env), cwd=str(cwd), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop every process started here (by pid), then delete the namespaces."""
        for proc in reversed(self.procs):
            stop_process(proc, signal.SIGKILL, grace=10.0)
        for name in reversed(self.namespaces):
            _ip("netns", "delete", name)
        self.namespaces.clear()

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(done.args)} failed: {done.stderr.strip()}")
