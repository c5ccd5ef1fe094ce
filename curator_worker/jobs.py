"""The job store: every job's record, counters, per-index results and committed shards, in Redis.

One namespace per job::

    curator:job:<id>              hash: spec, options, state, timestamps, counters,
                                  ``merged`` once gather merged the shards of a job
                                  that succeeds, ``publishing`` ({pid, host, since,
                                  seen}) while its producer publishes the tasks
    curator:job:<id>:batches      hash: batch key -> JSON index list
    curator:job:<id>:committed    hash: batch key -> commit record (shards, host, pid)
    curator:job:<id>:results      hash: batch key -> JSON array of the batch's per-index
                                  records ({"index", "paths", ...} or {"index", "error"})
    curator:job:<id>:failures     hash: index -> record with the error, failed indices only
    curator:job:<id>:attempts     hash: batch key -> deliveries so far
    curator:job:<id>:current      hash: batch key -> index running (redelivered batches only)
    curator:job:<id>:inflight     hash: batch key -> indices done so far (live progress)
    curator:job:<id>:done         list: pushed when the job ends (wakes waiters at once)
    curator:job:<id>:workers      hash: "node/pid" -> last batch start (active workers)
    curator:job:<id>:blame        hash: "<batch>:<index>" -> {"count", "kind"}: indices
                                  that were running when their worker died
    curator:job:<id>:deaths       hash: batch key -> deliveries that found the previous
                                  attempt dead (duplicates of a live attempt not counted)
    curator:job:<id>:alive:<batch> string "host/pid/token" of the attempt running the batch,
                                  renewed while it lives, expiring soon after it died
    curator:job:<id>:gathering    string: the gather lock (expires unless renewed)
    curator:job:<id>:tags         hash, in the *broker's* Redis: batch key -> delivery tag
                                  of its message, for lease renewal (``lease.py``)
    curator:jobs                  sorted set: job id by creation time
    curator:spec:<hash>:cost      the last finished job of that spec: JSON {"seconds"
                                  per index (batch wall time / indices), "spread" of
                                  its batches' rates}, for automatic batch sizes
    curator:nodes                 hash: worker node -> {concurrency, queues, ts} (heartbeats)

Progress and completion are read from these counters, never from Celery's result
objects. A batch commit is one Lua script (``lua/commit_batch.lua``), so a batch's results,
its shards and the counters change together or not at all. A batch's per-index records are
stored together, as one JSON array per batch: a commit then costs the worker one JSON
encoding and Redis O(1) work per succeeded index, whatever the batch size.
"""

from __future__ import annotations

import gc
import json
import operator
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from curator_worker import batch_results
from curator_worker.batch_results import EncodedResults
from curator_worker.config import redact_url
from curator_worker.errors import BrokerUnavailableError, JobNotFoundError
from curator_worker.planning import IndexCost

PREFIX = "curator"
JOBS_INDEX = f"{PREFIX}:jobs"

#: States of a job. The last four are final.
RUNNING = "running"
SUCCEEDED = "succeeded"
PARTIAL = "partial"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL_STATES = frozenset({SUCCEEDED, PARTIAL, FAILED, CANCELLED})

#: :meth:`JobStore.commit_batch` outcomes.
ALREADY_COMMITTED = 0
COMMITTED = 1
COMMITTED_LAST = 2  # committed, and every planned batch of the job is now committed

#: Seconds a gather lock lives without renewal (its holder renews it while it runs).
GATHER_LOCK_TTL = 30.0
#: Seconds between heartbeats of a producer publishing a job's tasks, and the age after
#: which a publishing producer is taken as dead (its submit did not finish).
PUBLISH_HEARTBEAT = 2.0
PUBLISH_STALE = 10.0
#: Seconds a running batch attempt's liveness mark lives without renewal.
ATTEMPT_MARK_TTL = 4.0
_HOST = socket.gethostname()

_BEGIN_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {0, ''} end
local attempt = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSETNX', KEYS[3], 'started', ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[4], ARGV[2], ARGV[3]) end
return {attempt, redis.call('HGET', KEYS[3], 'state') or ''}
"""
_REFRESH_PUBLISHING_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'publishing') == 1 then
  return redis.call('HSET', KEYS[1], 'publishing', ARGV[1])
end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_COMMIT_SCRIPT = resources.files("curator_worker").joinpath("lua/commit_batch.lua").read_text()
_SET_STATE_SCRIPT = resources.files("curator_worker").joinpath("lua/set_state.lua").read_text()
_LOCKED_HSET_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


def plan_entry(indices: Sequence[int]) -> str:
    """How a planned batch's indices are stored (``curator:job:<id>:batches``): JSON text.

    A worker compares a message's indices with the plan by this text
    (:meth:`JobStore.planned_indices`), so it is the one place that writes it.
    """
    return json.dumps(list(indices))


def new_job_id() -> str:
    """A fresh job id: sortable by time, unique across hosts."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]


#: How long a job store client keeps retrying through an outage (a Redis restart).
RETRY_ATTEMPTS = 40


def connect(url: str, *, timeout: float = 5.0, retries: int = RETRY_ATTEMPTS) -> redis.Redis:
    """A Redis client for ``url``: checked within ``timeout`` seconds, then resilient.

    A first PING on a probe connection (no retries, ``timeout`` for connect and reply)
    answers within ``timeout`` whether the server is there. The returned client retries
    connection errors ``retries`` times with exponential backoff (about a minute in all
    by default), so a Redis restart mid-job is ridden out; every job store write is
    idempotent, so retries are safe. ``retries=0``: a client that fails within
    ``timeout`` instead (for code that must never block, like a worker's event loop).

    Raises
    ------
    BrokerUnavailableError
        Naming the URL with its password redacted.
    """
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                     socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
        try:
            probe.ping()
        finally:
            probe.close()
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout,
            socket_timeout=max(timeout, 30.0) if retries else timeout,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries) if retries
            else Retry(NoBackoff(), 0),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
    except (redis.RedisError, OSError, ValueError) as exc:
        raise BrokerUnavailableError(
            f"Cannot reach Redis at {redact_url(url)}: {type(exc).__name__}: "
            f"{(redact_url(str(exc)) if '://' in str(exc) else str(exc)).rstrip('.')}. "
            "Check the URL and "
            "that the server is running."
        ) from None
    return client


@dataclass
class JobStatus:
    """A snapshot of one job, as ``curator-jobs status`` shows it."""

    job_id: str
    state: str
    total: int
    done: int
    failed: int
    n_batches: int
    committed_batches: int
    created: float
    started: float | None
    finished: float | None
    error: str | None
    queue: str
    options: dict[str, Any] = field(default_factory=dict)
    #: While (or if) the submit is publishing the job's tasks: its producer's pid, host,
    #: start and last heartbeat (``None`` once every task was published).
    publishing: dict[str, Any] | None = None

    @property
    def submit_unfinished(self) -> bool:
        """True when the producer stopped publishing the job's tasks before the end (it was
        killed: its heartbeat is older than :data:`PUBLISH_STALE` seconds, or its pid is
        gone on this host)."""
        if self.publishing is None or self.is_final:
            return False
        seen = float(self.publishing.get("seen") or 0)
        if time.time() - seen > PUBLISH_STALE:
            return True
        pid = self.publishing.get("pid")
        return self.publishing.get("host") == _HOST and isinstance(pid, int) \
            and not _pid_alive(pid)

    def submit_note(self) -> str | None:
        """One line on an unfinished or ongoing submit, with what to run (else ``None``)."""
        if self.publishing is None or self.is_final:
            return None
        who = f"pid {self.publishing.get('pid')} on {self.publishing.get('host')}"
        if self.submit_unfinished:
            ago = time.time() - float(self.publishing.get("seen") or 0)
            return (f"the submit did not finish: its producer ({who}) stopped while publishing "
                    f"the tasks (last seen {ago:.0f}s ago), so some batches may never have "
                    f"been queued. Run `curator-jobs resume {self.job_id}` to send them.")
        return f"the submit is still publishing the tasks ({who})"

    @property
    def processed(self) -> int:
        """Indices that have a result (done or failed)."""
        return self.done + self.failed

    @property
    def is_final(self) -> bool:
        """True once the job is succeeded, partial, failed or cancelled."""
        return self.state in FINAL_STATES

    @property
    def all_committed(self) -> bool:
        """True when every batch is committed (gather can run)."""
        return self.committed_batches >= self.n_batches

    def exit_code(self) -> int:
        """0 when every index succeeded, 1 when some failed, 2 for a systemic failure."""
        if self.state == SUCCEEDED:
            return 0
        if self.state == PARTIAL:
            return 1
        return 2

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        return {
            "job_id": self.job_id,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "batches": self.n_batches,
            "committed_batches": self.committed_batches,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "queue": self.queue,
            "publishing": self.publishing,
            "submit_unfinished": self.submit_unfinished,
        }


@dataclass(frozen=True)
class BatchStart:
    """A batch delivery that may run: its attempt number and the job's state then."""

    attempt: int
    state: str | None


def _pid_alive(pid: int) -> bool:
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
        self.value = f"{_HOST}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
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
            if host == _HOST and pid.isdigit():
                return int(pid) != os.getpid() and _pid_alive(int(pid))
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
            self.client.eval(_RELEASE_SCRIPT, 1, self.key, self.value)
        except redis.RedisError:
            pass  # it expires by itself


def _publishing_marker(since: float, seen: float) -> str:
    return json.dumps({"pid": os.getpid(), "host": _HOST, "since": since, "seen": seen})


def _float(value: bytes | None) -> float | None:
    return float(value) if value not in (None, b"") else None


class JobStore:
    """Reads and writes jobs in Redis.

    Parameters
    ----------
    client : redis.Redis
        Connection to the job store's Redis.
    ttl : int
        Seconds a finished job's keys are kept.
    """

    def __init__(self, client: redis.Redis, ttl: int = 7 * 24 * 3600) -> None:
        self.client = client
        self.ttl = ttl
        self._commit = client.register_script(_COMMIT_SCRIPT)
        self._begin = client.register_script(_BEGIN_SCRIPT)
        self._set_state = client.register_script(_SET_STATE_SCRIPT)
        self._locked_hset = client.register_script(_LOCKED_HSET_SCRIPT)

    @classmethod
    def from_url(cls, url: str, ttl: int = 7 * 24 * 3600, timeout: float = 5.0) -> JobStore:
        """Connect to ``url`` (checked with PING; see :func:`connect`)."""
        return cls(connect(url, timeout=timeout), ttl=ttl)

    # -- keys
    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        """The Redis key of ``part`` of job ``job_id``."""
        return f"{PREFIX}:job:{job_id}" + (f":{part}" if part else "")

    def _keys(self, job_id: str) -> list[str]:
        parts = ("", "batches", "committed", "results", "failures", "attempts", "current",
                 "blame", "workers", "inflight", "done", "deaths")
        return [self.key(job_id, p) for p in parts]

    # -- writing
    def create_job(
        self,
        job_id: str,
        spec: Mapping[str, Any],
        options: Mapping[str, Any],
        batches: Sequence[tuple[str, Sequence[int]]],
        total: int,
        queue: str,
        publishing: bool = False,
    ) -> None:
        """Write a new job's record and its batch plan in one transaction.

        ``publishing``: mark the job as being published by this process (pid, host,
        heartbeat) until :meth:`published` clears it, so a submit killed half-way is told
        apart from a job with nothing left to run (:attr:`JobStatus.submit_unfinished`).
        """
        now = time.time()
        marker = {"publishing": _publishing_marker(now, now)} if publishing else {}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            self.key(job_id),
            mapping={
                **marker,
                "spec": json.dumps(spec),
                "options": json.dumps(dict(options)),
                "state": RUNNING,
                "created": now,
                "total": total,
                "n_batches": len(batches),
                "done": 0,
                "failed": 0,
                "committed_batches": 0,
                "queue": queue,
            },
        )
        for start in range(0, len(batches), 10_000):
            chunk = batches[start : start + 10_000]
            pipe.hset(
                self.key(job_id, "batches"),
                mapping={key: plan_entry(indices) for key, indices in chunk},
            )
        pipe.zadd(JOBS_INDEX, {job_id: now})
        pipe.execute()

    def publishing_heartbeat(self, job_id: str, since: float) -> None:
        """Refresh the heartbeat of this process publishing ``job_id`` (while marked)."""
        self.client.eval(_REFRESH_PUBLISHING_SCRIPT, 1, self.key(job_id),
                         _publishing_marker(since, time.time()))

    def published(self, job_id: str) -> None:
        """Every task of ``job_id`` is published: clear the publishing mark."""
        self.client.hdel(self.key(job_id), "publishing")

    def begin_batch(self, job_id: str, batch_key: str, worker: str = "") -> BatchStart | None:
        """Start a delivery of ``batch_key``: ``None`` if it is committed, else its start.

        One round trip: checks the commit, counts the delivery (attempt 1, 2, ...), sets
        the job's ``started`` time once, records ``worker`` (node/pid) as seen now for the
        count of active workers, and reads the job's state.
        """
        attempt, state = self._begin(
            keys=[self.key(job_id, "committed"), self.key(job_id, "attempts"), self.key(job_id),
                  self.key(job_id, "workers")],
            args=[batch_key, worker, time.time()],
        )
        if not attempt:
            return None
        return BatchStart(int(attempt), state.decode() if state else None)

    def commit_batch(
        self, job_id: str, batch_key: str, results: EncodedResults, record: Mapping[str, Any]
    ) -> int:
        """Commit a batch: its per-index results, shards and counters, atomically.

        Parameters
        ----------
        job_id, batch_key : str
            The batch.
        results : EncodedResults
            The batch's per-index results (:func:`curator_worker.batch_results.encode`).
        record : Mapping
            The commit record (shards, node, host, pid, attempt, timings).

        Returns
        -------
        int
            :data:`COMMITTED`; :data:`COMMITTED_LAST` when every planned batch is now
            committed; :data:`ALREADY_COMMITTED` (0, false) when another attempt committed it
            first (the caller then discards its own shards).
        """
        failed: list[Any] = []
        for index, entry in results.failed.items():
            failed += [index, entry]
        args = [batch_key, json.dumps(dict(record)), results.blob, json.dumps(results.ok),
                *failed]
        keys = self._keys(job_id)
        return int(self._commit(keys=[keys[0], keys[2], keys[3], keys[4], keys[9]], args=args))

    @contextmanager
    def gather_lock(self, job_id: str, ttl: float = GATHER_LOCK_TTL) -> Iterator[bool]:
        """Hold the job's gather lock within the block; yields False if another holds it.

        See :meth:`gather_lease`, which also yields the token a holder's writes are checked
        against.
        """
        with self.gather_lease(job_id, ttl) as token:
            yield token is not None

    @contextmanager
    def gather_lease(self, job_id: str, ttl: float = GATHER_LOCK_TTL) -> Iterator[str | None]:
        """Hold the job's gather lock within the block; yields its token, or ``None`` if
        another holds it.

        Only one gather merges a job's shards at a time (the last batch's own and the chord
        callback can overlap). The lock expires ``ttl`` seconds after its holder died or
        froze; a live holder renews it from a thread every ``ttl / 3`` seconds. A holder
        whose lock expired (a node frozen longer than ``ttl``) has lost it for good: its
        writes that pass the token (:meth:`set_state`, :meth:`mark_merged`) are refused,
        and :meth:`holds_gather_lock` says so before it touches a file.
        """
        key, token = self.key(job_id, "gathering"), uuid.uuid4().hex
        if not self.client.set(key, token, nx=True, px=int(ttl * 1000)):
            yield None
            return
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(ttl / 3):
                try:
                    if not self.client.eval(_RENEW_SCRIPT, 1, key, token, int(ttl * 1000)):
                        return  # lost (expired, then taken or not): never taken back
                except redis.RedisError:
                    pass  # retried at the next period; the lock outlives a short outage

        renewer = threading.Thread(target=renew, name=f"gather-lock-{job_id}", daemon=True)
        renewer.start()
        try:
            yield token
        finally:
            stop.set()
            renewer.join()
            self.client.eval(_RELEASE_SCRIPT, 1, key, token)

    def holds_gather_lock(self, job_id: str, token: str) -> bool:
        """Whether the gather lock of ``job_id`` is still the one ``token`` was given."""
        value = self.client.get(self.key(job_id, "gathering"))
        return value is not None and value.decode() == token

    def report_inflight(self, job_id: str, batch_key: str, processed: int) -> None:
        """Live progress of a running batch: ``processed`` of its indices so far."""
        self.client.hset(self.key(job_id, "inflight"), batch_key, processed)

    # -- crash attribution: which index was running when a worker died
    def set_current(self, job_id: str, batch_key: str, index: int | None) -> None:
        """Record the index ``batch_key`` is running (``None``: between indices)."""
        key = self.key(job_id, "current")
        if index is None:
            self.client.hdel(key, batch_key)
        else:
            self.client.hset(key, batch_key, index)

    def take_current(self, job_id: str, batch_key: str) -> int | None:
        """The index a previous attempt was running when it died (and forget it)."""
        key = self.key(job_id, "current")
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(key, batch_key)
        pipe.hdel(key, batch_key)
        value = pipe.execute()[0]
        return int(value) if value is not None else None

    def blame(self, job_id: str, batch_key: str, index: int, kind: str, count: int = 1) -> int:
        """Add ``count`` to the deaths blamed on ``index``; return its total."""
        key, field_name = self.key(job_id, "blame"), f"{batch_key}:{index}"
        raw = self.client.hget(key, field_name)
        entry = json.loads(raw) if raw else {"count": 0, "kind": kind}
        entry["count"] += count
        entry["kind"] = kind if kind != "crash" else entry["kind"]
        self.client.hset(key, field_name, json.dumps(entry))
        return int(entry["count"])

    def record_death(self, job_id: str, batch_key: str) -> int:
        """Count one death of a worker running ``batch_key``; return the deaths so far."""
        return int(self.client.hincrby(self.key(job_id, "deaths"), batch_key, 1))

    def deaths(self, job_id: str, batch_key: str) -> int:
        """Deaths of workers running ``batch_key`` so far (:meth:`record_death`)."""
        return int(self.client.hget(self.key(job_id, "deaths"), batch_key) or 0)

    def attempt_mark(self, job_id: str, batch_key: str,
                     ttl: float = ATTEMPT_MARK_TTL) -> AttemptMark:
        """The liveness mark of a batch attempt of this process (see :class:`AttemptMark`)."""
        return AttemptMark(self.client, self.key(job_id, f"alive:{batch_key}"), ttl)

    def blamed(self, job_id: str, batch_key: str) -> dict[int, dict[str, Any]]:
        """Indices of ``batch_key`` blamed for worker deaths: index -> {count, kind}."""
        out = {}
        for name, raw in self.client.hscan_iter(self.key(job_id, "blame"), match=f"{batch_key}:*"):
            out[int(name.decode().rsplit(":", 1)[1])] = json.loads(raw)
        return out

    # -- job control
    def cancel(self, job_id: str) -> str:
        """Mark a job cancelled (running batches stop at their next index); return old state.

        A compare-and-set: a job that ended meanwhile (a gather finished it) keeps its state.

        Raises
        ------
        JobNotFoundError
            If no such job exists.
        """
        _, before = self._compare_and_set_state(job_id, CANCELLED, (RUNNING,), None, {})
        if before is None:
            self.record(job_id)  # raises JobNotFoundError
        return before or RUNNING

    def reopen(self, job_id: str, clear_error: bool = False) -> None:
        """Put a job back to ``running`` (resume, retry) and cancel its expiry."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key(job_id), "state", RUNNING)
        pipe.hdel(self.key(job_id), "finished")
        if clear_error:
            pipe.hdel(self.key(job_id), "error")
        pipe.delete(self.key(job_id, "done"))
        for key in self._keys(job_id):
            pipe.persist(key)
        pipe.execute()

    def add_batches(self, job_id: str, batches: Sequence[tuple[str, Sequence[int]]]) -> None:
        """Plan more batches for a job (retry of failed indices)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key(job_id, "batches"),
                  mapping={key: plan_entry(indices) for key, indices in batches})
        pipe.hincrby(self.key(job_id), "n_batches", len(batches))
        pipe.hincrby(self.key(job_id), "retries", 1)
        pipe.execute()

    def uncommitted(self, job_id: str) -> dict[str, list[int]]:
        """Planned batches not committed yet: key -> indices."""
        committed = {k.decode() for k in self.client.hkeys(self.key(job_id, "committed"))}
        return {k: v for k, v in self.batches(job_id).items() if k not in committed}

    def set_state(
        self, job_id: str, state: str, *, expect: Sequence[str] = (RUNNING,),
        lock: str | None = None, **fields: Any,
    ) -> bool:
        """Set the job's state (and other record fields) if it is one of ``expect``.

        A compare-and-set in one round trip (``lua/set_state.lua``): a job that ended keeps
        its state, so a late or duplicate writer changes nothing. With ``lock`` (a gather's
        token, :meth:`gather_lease`) the write also needs the gather lock still held. A
        final state sets ``finished``, wakes waiters and starts the keys' expiry in the same
        step. Returns whether the state was written.
        """
        return self._compare_and_set_state(job_id, state, expect, lock, fields)[0]

    def _compare_and_set_state(
        self, job_id: str, state: str, expect: Sequence[str], lock: str | None,
        fields: Mapping[str, Any],
    ) -> tuple[bool, str | None]:
        """:meth:`set_state`; also returns the state before (``None``: no such job)."""
        final = state in FINAL_STATES
        mapping = dict(fields)
        if final:
            mapping.setdefault("finished", time.time())
        args: list[Any] = [state, ",".join(expect), lock or "", self.ttl if final else ""]
        for name, value in mapping.items():
            args += [name, value]
        keys = [self.key(job_id), self.key(job_id, "done"), self.key(job_id, "gathering"),
                *self._keys(job_id)]
        written, before = self._set_state(keys=keys, args=args)
        return bool(written), (before.decode() if before else None)

    def wait_for_change(self, job_id: str, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking early when the job reaches a final state."""
        self.client.blpop([self.key(job_id, "done")], timeout=max(timeout, 0.01))

    def mark_merged(self, job_id: str, lock: str | None = None) -> bool:
        """Record that gather merged the job's shards into its final outputs (and will
        remove them): a gather running again after that must not merge again.

        With ``lock`` (a gather's token) only while that gather still holds the lock.
        Returns whether it was recorded.
        """
        if lock is None:
            self.client.hset(self.key(job_id), "merged", time.time())
            return True
        return bool(self._locked_hset(keys=[self.key(job_id, "gathering"), self.key(job_id)],
                                      args=[lock, "merged", time.time()]))

    def is_merged(self, job_id: str) -> bool:
        """Whether :meth:`mark_merged` was called for the job."""
        return bool(self.client.hexists(self.key(job_id), "merged"))

    def record_error(self, job_id: str, message: str) -> None:
        """Record a systemic error (e.g. the spec cannot be built on a worker); first one wins."""
        self.client.hsetnx(self.key(job_id), "error", message)

    # -- cost per index, per spec (automatic batch sizes of the next job of that spec)
    def remember_index_cost(self, job_id: str, digest: str) -> IndexCost | None:
        """Store what finished job ``job_id`` measured per index, for spec hash ``digest``.

        From its committed batches: seconds per index (wall time of each batch, per-index
        overhead included, over all their indices) and the spread of the batches' seconds
        per index; kept for the job TTL. Returns it.
        """
        timed: list[tuple[float, int]] = []
        for record in self.commit_records(job_id).values():
            started, finished, n = record.get("started"), record.get("finished"), record.get("n")
            if started is not None and finished is not None and n:
                timed.append((max(0.0, float(finished) - float(started)), int(n)))
        indices = sum(n for _, n in timed)
        if not indices:
            return None
        seconds = sum(d for d, _ in timed) / indices
        spread = None
        if len(timed) > 1 and seconds > 0:
            variance = sum(n * (d / n - seconds) ** 2 for d, n in timed) / indices
            spread = variance ** 0.5 / seconds
        cost = IndexCost(seconds, spread)
        self.client.set(f"{PREFIX}:spec:{digest}:cost",
                        json.dumps({"seconds": seconds, "spread": spread}), ex=self.ttl)
        return cost

    def index_cost(self, digest: str) -> IndexCost | None:
        """What the last finished job of spec hash ``digest`` measured per index, if known."""
        raw = self.client.get(f"{PREFIX}:spec:{digest}:cost")
        if raw is None:
            return None
        try:
            value = json.loads(raw)
            if isinstance(value, dict):
                spread = value.get("spread")
                return IndexCost(float(value["seconds"]),
                                 None if spread is None else float(spread))
            return IndexCost(float(value))  # a bare number: seconds only
        except (ValueError, TypeError, KeyError):
            return None

    # -- message validation (curator_worker.trust): read before a worker writes anything
    def planned_indices(self, job_id: str, batch_key: str) -> bytes | None:
        """The stored plan of ``batch_key`` (:func:`plan_entry` text), in one lookup.

        ``None`` when the job planned no such batch (at submit or in a retry round) or
        there is no such job.
        """
        return self.client.hget(self.key(job_id, "batches"), batch_key)

    # -- reading
    def record(self, job_id: str) -> dict[str, Any]:
        """The job's record with ``spec`` and ``options`` decoded.

        Raises
        ------
        JobNotFoundError
            If no such job exists (never submitted, or expired).
        """
        raw = self.client.hgetall(self.key(job_id))
        if not raw:
            raise JobNotFoundError(
                f"No job {job_id!r} in the job store. Check the id with `curator-jobs list`; "
                "finished jobs expire after CURATOR_JOB_TTL."
            )
        out: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        out["spec"] = json.loads(out["spec"])
        out["options"] = json.loads(out.get("options", "{}"))
        return out

    _STATUS_FIELDS = (
        "state", "total", "done", "failed", "n_batches", "committed_batches", "created",
        "started", "finished", "error", "queue", "options", "publishing",
    )

    def status(self, job_id: str) -> JobStatus:
        """A :class:`JobStatus` snapshot (one round trip)."""
        return self._status(job_id, self.client.hmget(self.key(job_id), self._STATUS_FIELDS))

    def progress(self, job_id: str, within: float = 60.0) -> tuple[JobStatus, int, int]:
        """Status, indices processed by running batches but not committed yet, and worker
        processes that started a batch of the job in the last ``within`` seconds, in one
        round trip: what a waiter polls."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.key(job_id), self._STATUS_FIELDS)
        pipe.hvals(self.key(job_id, "inflight"))
        pipe.hvals(self.key(job_id, "workers"))
        values, inflight, seen = pipe.execute()
        now = time.time()
        return (self._status(job_id, values), sum(int(v) for v in inflight),
                sum(1 for t in seen if now - float(t) <= within))

    def _status(self, job_id: str, values: Sequence[bytes | None]) -> JobStatus:
        if values[0] is None:
            self.record(job_id)  # raises JobNotFoundError
        v = dict(zip(self._STATUS_FIELDS, values, strict=True))
        return JobStatus(
            job_id=job_id,
            state=v["state"].decode(),
            total=int(v["total"] or 0),
            done=int(v["done"] or 0),
            failed=int(v["failed"] or 0),
            n_batches=int(v["n_batches"] or 0),
            committed_batches=int(v["committed_batches"] or 0),
            created=float(v["created"] or 0),
            started=_float(v["started"]),
            finished=_float(v["finished"]),
            error=v["error"].decode() if v["error"] else None,
            queue=(v["queue"] or b"").decode(),
            options=json.loads(v["options"] or b"{}"),
            publishing=json.loads(v["publishing"]) if v["publishing"] else None,
        )

    def state(self, job_id: str) -> str | None:
        """The job's state alone (one field; ``None`` if the job does not exist)."""
        value = self.client.hget(self.key(job_id), "state")
        return value.decode() if value is not None else None

    def batches(self, job_id: str) -> dict[str, list[int]]:
        """Every planned batch: key -> indices."""
        raw = self.client.hgetall(self.key(job_id, "batches"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def commit_records(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Committed batches: key -> commit record (with ``shards``)."""
        raw = self.client.hgetall(self.key(job_id, "committed"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def _blobs(self, job_id: str) -> list[tuple[str, bytes]]:
        """Committed batches' result blobs, planned batches first, then retry rounds."""
        raw = self.client.hgetall(self.key(job_id, "results"))
        blobs = [(k.decode(), v) for k, v in raw.items()]
        blobs.sort(key=lambda kv: (_retry_round(kv[0]), kv[0]))
        return blobs

    def result_records(self, job_id: str) -> dict[int, tuple[str, dict[str, Any]]]:
        """Every committed per-index record: index -> (batch key, record).

        An index run again by a retry round keeps its success if it ever succeeded, else
        the latest round's error.
        """
        out: dict[int, tuple[str, dict[str, Any]]] = {}
        with collector_paused():
            for batch_key, blob in self._blobs(job_id):
                for entry in batch_results.decode(blob):
                    index = entry["index"]
                    before = out.get(index)
                    if before is None or "error" in before[1]:
                        out[index] = (batch_key, entry)
        return out

    def results(self, job_id: str, indices: Sequence[int]) -> list[dict[str, Any] | None]:
        """Per-index records in the order of ``indices`` (``None`` where none is committed).

        Each record has ``index`` and ``paths`` (success) or ``error``, with ``seconds``,
        ``attempt`` and, when recorded, ``stages``, ``end`` and ``peak_mb``.
        """
        merged = self.result_records(job_id)
        out: list[dict[str, Any] | None] = []
        for index in indices:
            found = merged.get(index)
            out.append(found[1] if found is not None else None)
        return out

    def _streamed_blobs(self, job_id: str, count: int = 64) -> Iterator[bytes]:
        """Committed batches' result blobs, ``count`` at a time from Redis: planned batches
        in any order, then retry rounds in round order (so a later round's record of an
        index comes last). Never holds every blob at once (a million indices' results
        are tens of MB)."""
        retries: list[tuple[str, bytes]] = []
        for key, blob in self.client.hscan_iter(self.key(job_id, "results"), count=count):
            batch_key = key.decode()
            if _retry_round(batch_key):
                retries.append((batch_key, blob))
            else:
                yield blob
        retries.sort(key=lambda kv: (_retry_round(kv[0]), kv[0]))
        for _, blob in retries:
            yield blob

    def paths(self, job_id: str, indices: Sequence[int]) -> list[list[str] | None]:
        """The sink paths of ``indices``, in order (``None`` where the index has not succeeded).

        The fast read behind ``run_pipeline(backend="celery")``: no per-index records built.
        Later retry rounds hold only indices that failed before, so the last round's record
        of an index is its outcome. When ``indices`` are consecutive (every index of a
        pipeline, the usual case) each batch's paths are copied by slice into the answer,
        with no index map.
        """
        n = len(indices)
        start = indices[0] if n else 0
        consecutive = (indices.step == 1 if isinstance(indices, range)
                       else all(map(operator.eq, indices, range(start, start + n))))
        with collector_paused():
            if consecutive:
                out: list[list[str] | None] = [None] * n
                for blob in self._streamed_blobs(job_id):
                    got, paths = batch_results.decode_path_columns(blob)
                    if (isinstance(got, range) and got.step == 1 and len(got)
                            and got.start >= start and got.stop <= start + n):
                        out[got.start - start:got.stop - start] = paths
                        continue
                    for index, path in zip(got, paths, strict=True):
                        if start <= index < start + n:
                            out[index - start] = path
                return out
            found: dict[int, list[str] | None] = {}
            for blob in self._streamed_blobs(job_id):
                found.update(batch_results.decode_paths(blob))
            return list(map(found.get, indices))

    def failures(self, job_id: str) -> dict[int, dict[str, Any]]:
        """Failed indices: index -> error record (type, message, traceback, attempt, host)."""
        raw = self.client.hgetall(self.key(job_id, "failures"))
        decoded = {int(k): json.loads(v)["error"] for k, v in raw.items()}
        return dict(sorted(decoded.items()))

    def list_jobs(self, limit: int = 20) -> list[str]:
        """The most recent job ids, newest first (expired ones skipped)."""
        ids = [i.decode() for i in self.client.zrevrange(JOBS_INDEX, 0, limit * 2)]
        alive = [i for i in ids if self.client.exists(self.key(i))]
        return alive[:limit]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while many small containers are built.

    Decoding result blobs creates no reference cycles, but every few hundred new lists
    start a collection, and the older generations' collections walk every object built so
    far: reading the paths of 200,000 indices took 2.4 times as long with it running. The
    collector is re-enabled on the way out (if it was enabled on the way in).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_RETRY_ROUND = re.compile(r"r(\d+)-")


def _retry_round(batch_key: str) -> int:
    """0 for a planned batch, N for a batch of retry round N (key ``rN-...``)."""
    match = _RETRY_ROUND.match(batch_key)
    return int(match.group(1)) if match else 0


NODES_KEY = f"{PREFIX}:nodes"
#: Seconds after its last heartbeat that a worker node is no longer counted as live.
NODE_TTL = 15.0


def announce_node(
    client: redis.Redis, node: str, concurrency: int, queues: list[str], task_events: bool = True
) -> None:
    """Record that worker ``node`` is alive with ``concurrency`` processes on ``queues``."""
    entry = {"concurrency": concurrency, "queues": queues, "ts": time.time(),
             "task_events": task_events}
    client.hset(NODES_KEY, node, json.dumps(entry))


def forget_node(client: redis.Redis, node: str) -> None:
    """Remove ``node`` from the live nodes (clean shutdown)."""
    client.hdel(NODES_KEY, node)


def live_nodes(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The nodes consuming ``queue`` that sent a heartbeat recently (their entries)."""
    now = time.time()
    entries = (json.loads(raw) for raw in client.hvals(NODES_KEY))
    return [e for e in entries
            if now - e.get("ts", 0) <= NODE_TTL and queue in e.get("queues", [])]


class Job:
    """A handle on one job in the job store, for Python users.

    Parameters
    ----------
    job_id : str
        The job's id.
    store : JobStore
        Where it lives.

    Examples
    --------
    >>> job = Job(job_id, JobStore.from_url(url))          # doctest: +SKIP
    >>> job.status().state, len(job.metrics())             # doctest: +SKIP
    ('succeeded', 2000)
    """

    def __init__(self, job_id: str, store: JobStore) -> None:
        self.job_id = job_id
        self.store = store

    def status(self) -> JobStatus:
        """A snapshot of state and counters."""
        return self.store.status(self.job_id)

    def failures(self) -> dict[int, dict[str, Any]]:
        """Failed indices and their error records."""
        return self.store.failures(self.job_id)

    def batches(self) -> list[dict[str, Any]]:
        """Every committed batch: key, node, host, pid, attempt, started, finished, n."""
        records = self.store.commit_records(self.job_id)
        out = []
        for key, record in sorted(records.items()):
            entry = {k: v for k, v in record.items() if k != "shards"}
            entry["batch"] = key
            out.append(entry)
        return out

    def metrics(self) -> list[dict[str, Any]]:
        """Per-index metrics, in index order.

        Each entry has ``index``, ``ok``, ``seconds`` (wall time), ``stages`` (seconds per
        stage: source, each filter, sink; when recorded), ``attempt`` (batch delivery),
        ``tries`` (the index's own retries included), ``end`` (finish time, epoch seconds),
        ``batch``, ``node``, ``host`` and ``pid`` of the worker process that committed it,
        ``peak_mb`` when memory tracing was on, and ``error`` (type and message) if it failed.
        """
        records = self.store.commit_records(self.job_id)
        merged = self.store.result_records(self.job_id)
        out = []
        for index in sorted(merged):
            batch, result = merged[index]
            record = records.get(batch, {})
            entry: dict[str, Any] = {
                "index": index,
                "ok": "error" not in result,
                "seconds": result.get("seconds", 0.0),
                "stages": result.get("stages", {}),
                "attempt": result.get("attempt", record.get("attempt", 1)),
                "tries": result.get("tries", 1),
                "end": result.get("end"),
                "batch": batch,
                "node": record.get("node", ""),
                "host": record.get("host", ""),
                "pid": record.get("pid"),
            }
            if "peak_mb" in result:
                entry["peak_mb"] = result["peak_mb"]
            if "error" in result:
                error = result["error"]
                entry["error"] = {"kind": error.get("kind"), "type": error.get("type"),
                                  "message": error.get("message")}
            out.append(entry)
        return out
