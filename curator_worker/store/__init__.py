"""The job store: every job's record, counters, per-index results and committed shards, in Redis.

Where things are, in this package: ``keys`` (every key), ``scripts`` (every Lua script,
files under ``lua/``), ``job_store`` (writes: record and plan, the batch protocol, crash
attribution, the gather lock, job control, costs), ``reads`` (status, results, paths,
failures), ``batch_results`` (how a batch's results are encoded), ``attempts`` (liveness of
batch attempts), ``nodes`` (live worker nodes), ``job`` (the ``Job`` handle), ``history``
(retries and resumes), ``connection`` (clients that ride out a restart).

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
                                  of its message, for lease renewal (worker/lease.py)
    curator:jobs                  sorted set: job id by creation time
    curator:spec:<hash>:cost      the last finished job of that spec: JSON {"seconds"
                                  per index (batch wall time / indices), "spread" of
                                  its batches' rates}, for automatic batch sizes
    curator:nodes                 hash: worker node -> {concurrency, queues, ts} (heartbeats)

Progress and completion are read from these counters, never from Celery's result
objects. A batch commit is one Lua script (``store/lua/commit_batch.lua``), so a batch's results,
its shards and the counters change together or not at all. A batch's per-index records are
stored together, as one JSON array per batch: a commit then costs the worker one JSON
encoding and Redis O(1) work per succeeded index, whatever the batch size.
"""

from curator_worker.store.connection import connect
from curator_worker.store.job import Job
from curator_worker.store.job_store import (
    ALREADY_COMMITTED,
    COMMITTED,
    COMMITTED_LAST,
    GATHER_LOCK_TTL,
    JobStore,
)
from curator_worker.store.keys import new_job_id
from curator_worker.store.status import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    PARTIAL,
    RUNNING,
    SUCCEEDED,
    JobStatus,
)

__all__ = [
    "ALREADY_COMMITTED",
    "CANCELLED",
    "COMMITTED",
    "COMMITTED_LAST",
    "FAILED",
    "FINAL_STATES",
    "GATHER_LOCK_TTL",
    "PARTIAL",
    "RUNNING",
    "SUCCEEDED",
    "Job",
    "JobStatus",
    "JobStore",
    "connect",
    "new_job_id",
]
