"""Limits on one index and one batch: time (signals, then a watchdog) and memory.

* A per-index timeout and a batch time limit raise :class:`IndexTimeout` /
  :class:`BatchTimeLimit` inside the running index through ``SIGALRM`` (main thread only),
  so a hung index is stopped and the batch goes on with the next one.
* Code stuck in C that never returns to the interpreter ignores signals: a watchdog thread
  then reports the stuck index (``on_stuck``) and kills this process with ``SIGKILL``, so
  the message is redelivered (``reject_on_worker_lost``) and the next attempt knows which
  index to skip.
* A per-index memory limit lowers ``RLIMIT_AS`` while the index runs, so a memory hog gets
  ``MemoryError`` instead of taking the machine down.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

#: Seconds past a deadline before the watchdog kills a process stuck in C code.
HARD_KILL_GRACE = 10.0


class IndexTimeout(Exception):  # noqa: N818 - named like the situation it reports
    """The running index exceeded its per-index timeout."""


class BatchTimeLimit(Exception):  # noqa: N818
    """The batch exceeded its time limit; the running and remaining indices are not done."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Deadlines:
    """Arms ``SIGALRM`` for the nearer of the index deadline and the batch deadline.

    Parameters
    ----------
    index_timeout : float | None
        Seconds one index may run.
    batch_time_limit : float | None
        Seconds the whole batch may run, from construction.
    on_stuck : callable, optional
        Called with the index number by the watchdog before it kills the process.
    """

    def __init__(
        self,
        index_timeout: float | None = None,
        batch_time_limit: float | None = None,
        on_stuck: Callable[[int, str], None] | None = None,
    ) -> None:
        self.index_timeout = index_timeout or None
        self.batch_deadline = (
            time.monotonic() + batch_time_limit if batch_time_limit else None
        )
        self.on_stuck = on_stuck
        self.enabled = bool(self.index_timeout or self.batch_deadline) and _main_thread()
        self._current: int | None = None
        self._hard_deadline: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def batch_expired(self) -> bool:
        """True once the batch time limit has passed."""
        return self.batch_deadline is not None and time.monotonic() >= self.batch_deadline

    @contextmanager
    def index(self, index: int) -> Iterator[None]:
        """Run one index under the deadlines (no-op when none is set)."""
        if not self.enabled:
            yield
            return
        now = time.monotonic()
        ends = [d for d in (
            now + self.index_timeout if self.index_timeout else None, self.batch_deadline
        ) if d is not None]
        deadline = min(ends)
        reason = (
            "batch" if self.batch_deadline is not None and deadline == self.batch_deadline
            else "index"
        )

        def expire(signum: int, frame: FrameType | None) -> None:
            if reason == "batch":
                raise BatchTimeLimit(f"batch time limit reached while running index {index}")
            raise IndexTimeout(f"index {index} exceeded its timeout of {self.index_timeout:g}s")

        previous = signal.signal(signal.SIGALRM, expire)
        with self._lock:
            self._current = index
            self._hard_deadline = deadline + HARD_KILL_GRACE
        self._ensure_watchdog()
        signal.setitimer(signal.ITIMER_REAL, max(deadline - now, 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            with self._lock:
                self._current = None
                self._hard_deadline = None

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="curator-watchdog", daemon=True
            )
            self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                current, hard = self._current, self._hard_deadline
            if current is None or hard is None or time.monotonic() < hard:
                continue
            log.error("index %s is stuck past its deadline in code that ignores signals; "
                      "killing this worker process so the batch is redelivered", current)
            if self.on_stuck is not None:
                try:
                    self.on_stuck(current, "timeout")
                except Exception:  # noqa: BLE001 - we are about to die anyway
                    log.exception("could not record the stuck index")
            os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        """Stop the watchdog thread."""
        self._stop.set()


@contextmanager
def memory_limit(megabytes: float | None) -> Iterator[None]:
    """Let the code inside allocate at most ``megabytes`` more address space.

    Beyond it allocations fail with ``MemoryError``. No-op when ``megabytes`` is falsy.
    """
    if not megabytes:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        used = 0
    limit = used + int(megabytes * 1024 * 1024)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
