"""A handle on one job for Python users: status, failures, batches, per-index metrics."""

from __future__ import annotations

from typing import Any

from curator_worker.store.job_store import JobStore
from curator_worker.store.status import JobStatus


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
