"""Batch attempts: a delivery that may run (:class:`BatchStart`) and the liveness mark
that tells a dead worker from a duplicate delivery of a live one (:class:`AttemptMark`)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from curator_worker.store import scripts

#: Seconds a running batch attempt's liveness mark lives without renewal.
ATTEMPT_MARK_TTL = 4.0
#: This host's name, as marks and publishing markers record it.
HOST = socket.gethostname()


@dataclass(frozen=True)
class BatchStart:
    """A batch delivery that may run: its attempt number, the job's state then, and
    whether the store set the attempt's liveness mark (the first delivery's)."""

    attempt: int
    state: str | None
    marked: bool = False


class UnplannedBatch(Exception):
    """A batch message whose job did not plan that batch with those indices."""

    def __init__(self, job_id: str, batch_key: str) -> None:
        super().__init__(f"job {job_id} planned no batch {batch_key} with these indices")
        self.job_id, self.batch_key = job_id, batch_key


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class _MarkRenewer:
    """The one thread of a process that renews the liveness marks of its running attempts.

    A thread per attempt cost a start and a join per batch; a pool process runs one batch
    at a time, so one thread renews whatever marks are registered, every third of the
    shortest time to live. :meth:`remove` returns only once no renewal of that mark is
    under way, so a mark released afterwards stays released. Started lazily, again in a
    forked child (threads do not survive a fork).
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._marks: dict[int, AttemptMark] = {}
        self._thread: threading.Thread | None = None

    def add(self, mark: AttemptMark) -> None:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._marks[id(mark)] = mark
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="attempt-marks",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def remove(self, mark: AttemptMark) -> None:
        if self._pid != os.getpid():
            return
        with self._lock:
            self._marks.pop(id(mark), None)

    def _run(self) -> None:
        due: dict[int, float] = {}
        while True:
            with self._lock:
                marks = dict(self._marks)
            now = time.monotonic()
            for key in list(due):
                if key not in marks:
                    del due[key]
            for key, mark in marks.items():
                due.setdefault(key, now + mark.ttl / 3)  # just set: renew a third later
            waits = [when - now for when in due.values()]
            self._wake.wait(max(0.0, min(waits)) if waits else None)
            self._wake.clear()
            now = time.monotonic()
            for key in [k for k, when in due.items() if when <= now]:
                with self._lock:  # remove() waits for a renewal under way
                    mark = self._marks.get(key)
                    if mark is None:
                        continue
                    try:
                        mark.set()
                    except redis.RedisError:
                        pass  # next period; a short outage only makes the mark look dead
                due[key] = now + mark.ttl / 3


_RENEWER = _MarkRenewer()


class AttemptMark:
    """Tells a worker's death from a duplicate delivery of a batch that is still running.

    A batch attempt keeps a mark (``host/pid/token``, with a time to live) renewed while it
    runs (by the process's one renewal thread). A redelivered batch first asks
    :meth:`another_alive`: a mark of a process of this host is checked by its pid at once;
    another host's mark is alive when it is still there after one full time to live
    (someone renewed it). Only a delivery that finds the previous attempt dead counts as a
    worker death (crash blame, ``max_attempts``); a visibility-timeout duplicate of a live
    attempt does not.

    The first delivery's mark is set by :meth:`JobStore.begin_batch` (then
    :meth:`keep_alive`); a later one calls :meth:`start` once the check is done. Use as a
    context manager around the attempt: the mark is released at the end, unless the
    batch's commit released it (:attr:`released`).
    """

    def __init__(self, client: redis.Redis, key: str, ttl: float) -> None:
        self.client, self.key, self.ttl = client, key, ttl
        self.value = f"{HOST}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._renewing = False
        #: the mark is gone already (the commit released it): nothing to release at the end
        self.released = False

    def another_alive(self) -> bool:
        """Whether another attempt of the batch is running now (waits up to one TTL)."""
        deadline = time.monotonic() + self.ttl + 0.5
        while True:
            raw = self.client.get(self.key)
            if raw is None:
                return False
            host, _, rest = raw.decode().partition("/")
            pid = rest.partition("/")[0]
            if host == HOST and pid.isdigit():
                return int(pid) != os.getpid() and pid_alive(int(pid))
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.2)

    @property
    def px(self) -> int:
        """The mark's time to live in milliseconds."""
        return int(self.ttl * 1000)

    def set(self) -> None:
        """Write (or renew) the mark."""
        self.client.set(self.key, self.value, px=self.px)

    def start(self) -> None:
        """Set the mark and renew it every third of its TTL until the block ends."""
        self.set()
        self.keep_alive()

    def keep_alive(self) -> None:
        """Renew the mark (already set) every third of its TTL until the block ends."""
        self._renewing = True
        _RENEWER.add(self)

    def stop_renewing(self) -> None:
        """No more renewals (none is under way when this returns)."""
        _RENEWER.remove(self)

    def __enter__(self) -> AttemptMark:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._renewing:
            return
        self.stop_renewing()
        if self.released:
            return
        try:
            scripts.register(self.client, "release_lock")(keys=[self.key], args=[self.value])
        except redis.RedisError:
            pass  # it expires by itself
