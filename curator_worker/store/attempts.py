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
    """A batch delivery that may run: its attempt number and the job's state then."""

    attempt: int
    state: str | None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class AttemptMark:
    """Tells a worker's death from a duplicate delivery of a batch that is still running.

    A batch attempt keeps a mark (``host/pid/token``, with a time to live) renewed by a
    thread while it runs. A redelivered batch first asks :meth:`another_alive`: a mark of
    a process of this host is checked by its pid at once; another host's mark is alive
    when it is still there after one full time to live (someone renewed it). Only a
    delivery that finds the previous attempt dead counts as a worker death (crash blame,
    ``max_attempts``); a visibility-timeout duplicate of a live attempt does not.

    Use as a context manager around the attempt; :meth:`start` once the check is done.
    """

    def __init__(self, client: redis.Redis, key: str, ttl: float) -> None:
        self.client, self.key, self.ttl = client, key, ttl
        self.value = f"{HOST}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def start(self) -> None:
        """Set the mark and renew it every third of its TTL until the block ends."""
        px = int(self.ttl * 1000)
        self.client.set(self.key, self.value, px=px)

        def renew() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    self.client.set(self.key, self.value, px=px)
                except redis.RedisError:
                    pass  # next period; a short outage only makes the mark look dead

        self._thread = threading.Thread(target=renew, name="attempt-mark", daemon=True)
        self._thread.start()

    def __enter__(self) -> AttemptMark:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            scripts.register(self.client, "release_lock")(keys=[self.key], args=[self.value])
        except redis.RedisError:
            pass  # it expires by itself
