"""Reading jobs back: records, status snapshots, per-index results and paths, failures.

:class:`JobReads` is the read half of :class:`~curator_worker.store.job_store.JobStore`;
result blobs are decoded by :mod:`curator_worker.store.batch_results`.
"""

from __future__ import annotations

import gc
import json
import operator
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from curator_worker.errors import JobNotFoundError
from curator_worker.store import batch_results
from curator_worker.store.keys import JOBS_INDEX, job_key, retry_round
from curator_worker.store.status import JobStatus


def _float(value: bytes | None) -> float | None:
    return float(value) if value not in (None, b"") else None


class JobReads:
    """What the job store answers about a job (the read half of ``JobStore``)."""

    client: redis.Redis

    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        """The Redis key of ``part`` of job ``job_id`` (:func:`.keys.job_key`)."""
        return job_key(job_id, part)

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
        blobs.sort(key=lambda kv: (retry_round(kv[0]), kv[0]))
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

    def streamed_result_blobs(self, job_id: str) -> Iterator[bytes]:
        """Each committed batch's result blob as stored (see
        :mod:`~curator_worker.store.batch_results`), a few at a time from Redis.

        Planned batches come first, then retry rounds in round order, so a later blob's
        record of an index supersedes an earlier one (a retry round only runs indices that
        had failed). For copying every batch of a large job without decoding or holding
        them all (:func:`~curator_worker.backends.celery.record_job_metrics`).
        """
        return self._streamed_blobs(job_id)

    def _streamed_blobs(self, job_id: str, count: int = 64) -> Iterator[bytes]:
        """Committed batches' result blobs, ``count`` at a time from Redis: planned batches
        in any order, then retry rounds in round order (so a later round's record of an
        index comes last). Never holds every blob at once (a million indices' results
        are tens of MB)."""
        retries: list[tuple[str, bytes]] = []
        for key, blob in self.client.hscan_iter(self.key(job_id, "results"), count=count):
            batch_key = key.decode()
            if retry_round(batch_key):
                retries.append((batch_key, blob))
            else:
                yield blob
        retries.sort(key=lambda kv: (retry_round(kv[0]), kv[0]))
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
