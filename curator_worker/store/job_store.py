"""The job store's writer: a job's record and plan, the batch protocol (begin, commit),
crash attribution, the gather lock, job control and per-spec costs.

Every write that must be atomic is a Lua script (:mod:`curator_worker.store.scripts`); the
keys are named in :mod:`curator_worker.store.keys`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from curator_worker.contract.planning import IndexCost
from curator_worker.store import scripts
from curator_worker.store.attempts import (
    ATTEMPT_MARK_TTL,
    AttemptMark,
    BatchStart,
    UnplannedBatch,
)
from curator_worker.store.batch_results import EncodedResults
from curator_worker.store.connection import connect
from curator_worker.store.keys import (
    JOBS_INDEX,
    alive_key,
    job_keys,
    plan_entry,
    spec_cost_key,
)
from curator_worker.store.reads import JobReads
from curator_worker.store.status import (
    CANCELLED,
    FINAL_STATES,
    RUNNING,
    publishing_marker,
)

#: :meth:`JobStore.commit_batch` outcomes.
ALREADY_COMMITTED = 0
COMMITTED = 1
COMMITTED_LAST = 2  # committed, and every planned batch of the job is now committed

#: Seconds a gather lock lives without renewal (its holder renews it while it runs).
GATHER_LOCK_TTL = 30.0


class JobStore(JobReads):
    """Reads and writes jobs in Redis (reads: :class:`~curator_worker.store.reads.JobReads`).

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
        self._commit = scripts.register(client, "commit_batch")
        self._begin = scripts.register(client, "begin_batch")
        self._set_state = scripts.register(client, "set_state")
        self._locked_hset = scripts.register(client, "locked_hset")
        self._refresh_publishing = scripts.register(client, "refresh_publishing")
        self._renew = scripts.register(client, "renew_lock")
        self._release = scripts.register(client, "release_lock")

    @classmethod
    def from_url(cls, url: str, ttl: int = 7 * 24 * 3600, timeout: float = 5.0) -> JobStore:
        """Connect to ``url`` (checked with PING; see :func:`connect`)."""
        return cls(connect(url, timeout=timeout), ttl=ttl)

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
        marker = {"publishing": publishing_marker(now, now)} if publishing else {}
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
        self._refresh_publishing(keys=[self.key(job_id)],
                                 args=[publishing_marker(since, time.time())])

    def published(self, job_id: str) -> None:
        """Every task of ``job_id`` is published: clear the publishing mark."""
        self.client.hdel(self.key(job_id), "publishing")

    def begin_batch(self, job_id: str, batch_key: str, worker: str = "", *,
                    plan: str | None = None, mark: AttemptMark | None = None
                    ) -> BatchStart | None:
        """Start a delivery of ``batch_key``: ``None`` if it is committed, else its start.

        One round trip: checks the plan (with ``plan``), checks the commit, counts the
        delivery (attempt 1, 2, ...), sets the job's ``started`` time once, records
        ``worker`` (node/pid) as seen now for the count of active workers, sets the first
        delivery's liveness ``mark`` (:attr:`BatchStart.marked`) and reads the job's state.

        Parameters
        ----------
        plan : str, optional
            The message's indices as :func:`plan_entry` writes them: a batch the job did
            not plan with exactly these raises :class:`UnplannedBatch` before anything is
            written.
        mark : AttemptMark, optional
            This attempt's liveness mark, set here when this is the first delivery.

        Raises
        ------
        UnplannedBatch
            See ``plan``.
        """
        attempt, state, marked = self._begin(
            keys=[self.key(job_id, "committed"), self.key(job_id, "attempts"), self.key(job_id),
                  self.key(job_id, "workers"), self.key(job_id, "batches"),
                  alive_key(job_id, batch_key)],
            args=[batch_key, worker, time.time(), plan or "",
                  mark.value if mark is not None else "",
                  mark.px if mark is not None else 0],
        )
        if int(attempt) < 0:
            raise UnplannedBatch(job_id, batch_key)
        if not attempt:
            return None
        return BatchStart(int(attempt), state.decode() if state else None, bool(marked))

    def commit_batch(
        self, job_id: str, batch_key: str, results: EncodedResults, record: Mapping[str, Any],
        mark: AttemptMark | None = None,
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
        mark : AttemptMark, optional
            The committing attempt's liveness mark, released in the same round trip
            (:meth:`AttemptMark.stop_renewing` first).

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
                mark.value if mark is not None else "", *failed]
        keys = [*(self.key(job_id, part)
                  for part in ("", "committed", "results", "failures", "inflight")),
                alive_key(job_id, batch_key)]
        committed = int(self._commit(keys=keys, args=args))
        if mark is not None:
            mark.released = True
        return committed

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
                    if not self._renew(keys=[key], args=[token, int(ttl * 1000)]):
                        return  # lost (expired, then taken or not): never taken back
                except redis.RedisError:
                    pass  # retried at the next period; the lock outlives a short outage

        renewer = threading.Thread(target=renew, name=f"gather-lock-{job_id}", daemon=True)
        renewer.start()
        try:
            yield token
        finally:
            # not joined (slow to wake on a busy machine): a later renewal writes nothing
            stop.set()
            self._release(keys=[key], args=[token])

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
        return AttemptMark(self.client, alive_key(job_id, batch_key), ttl)

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
        for key in job_keys(job_id):
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
                *job_keys(job_id)]
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
        self.client.set(spec_cost_key(digest),
                        json.dumps({"seconds": seconds, "spread": spread}), ex=self.ttl)
        return cost

    def index_cost(self, digest: str) -> IndexCost | None:
        """What the last finished job of spec hash ``digest`` measured per index, if known."""
        raw = self.client.get(spec_cost_key(digest))
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
