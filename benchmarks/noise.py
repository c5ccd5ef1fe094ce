"""CPU used by other programs while a benchmark runs ("foreign" CPU), to flag noisy runs.

On a shared machine another program's burst of CPU makes one runner look slow. Each
timed run is wrapped in a :class:`CpuMeter`: the machine's busy CPU time minus the CPU
time of this process and its descendants (pools, worker nodes, Redis) is what others
used, as a fraction of the machine (``1.0`` = every core busy for the whole run).
:func:`wait_quiet` waits until the machine is idle before a round.
"""

from __future__ import annotations

import statistics
import time

import psutil


def _busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own() -> float:
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class CpuMeter:
    """``with CpuMeter() as m: ...`` then ``m.foreign`` (fraction of all cores, 0..1)."""

    def __enter__(self) -> CpuMeter:
        self.start = time.perf_counter()
        self.busy0, self.own0 = _busy(), _own()
        self.foreign = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.perf_counter() - self.start, 1e-6)
        foreign = (_busy() - self.busy0) - (_own() - self.own0)
        self.foreign = max(0.0, foreign / (wall * (psutil.cpu_count() or 1)))


def foreign_load(seconds: float = 1.0) -> float:
    """Fraction of the machine used by other programs over the next ``seconds``."""
    with CpuMeter() as meter:
        time.sleep(seconds)
    return meter.foreign


def wait_quiet(limit: float = 0.05, patience: float = 0.0) -> float:
    """Wait (at most ``patience`` s) until other programs use < ``limit`` of the machine.

    Returns the last foreign load seen.
    """
    deadline = time.monotonic() + patience
    load = foreign_load(0.5)
    while load >= limit and time.monotonic() < deadline:
        load = foreign_load(1.0)
    return load


def clean_median(values: list[float], loads: list[float], limit: float) -> tuple[float, int]:
    """Median of the runs during which other programs used < ``limit`` of the machine
    (of all runs when none was that quiet); and how many runs were noisy."""
    clean = [v for v, load in zip(values, loads, strict=True) if load < limit]
    return statistics.median(clean or values), len(values) - len(clean)
