"""Every key the job store writes, named in one place, and the text formats stored in them.

One namespace per job (``curator:job:<id>`` and its parts, :data:`JOB_PARTS`), plus a few
keys shared by all jobs. The table of what each holds is in :mod:`curator_worker.store`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence

PREFIX = "curator"
#: Sorted set: job id by creation time.
JOBS_INDEX = f"{PREFIX}:jobs"
#: Hash: worker node -> {concurrency, queues, ts} (heartbeats).
NODES_KEY = f"{PREFIX}:nodes"

#: The parts of a job's namespace that live and expire with it ("" is the job's hash).
JOB_PARTS = ("", "batches", "committed", "results", "failures", "attempts", "current",
             "blame", "workers", "inflight", "done", "deaths")


def job_key(job_id: str, part: str = "") -> str:
    """The Redis key of ``part`` of job ``job_id`` (``""``: the job's own hash)."""
    return f"{PREFIX}:job:{job_id}" + (f":{part}" if part else "")


def job_keys(job_id: str) -> list[str]:
    """Every key of :data:`JOB_PARTS` for ``job_id``, in that order."""
    return [job_key(job_id, part) for part in JOB_PARTS]


def delivery_tags_key(job_id: str) -> str:
    """The broker Redis hash of a job's batch key -> delivery tag of its message (written
    by the producer, read by the worker renewing the batch's lease)."""
    return job_key(job_id, "tags")


def alive_key(job_id: str, batch_key: str) -> str:
    """The liveness mark of the attempt running ``batch_key`` (``AttemptMark``)."""
    return job_key(job_id, f"alive:{batch_key}")


def spec_cost_key(digest: str) -> str:
    """What the last finished job of spec hash ``digest`` measured per index."""
    return f"{PREFIX}:spec:{digest}:cost"


def plan_entry(indices: Sequence[int]) -> str:
    """How a planned batch's indices are stored (``curator:job:<id>:batches``): JSON text.

    A worker compares a message's indices with the plan by this text
    (:meth:`JobStore.planned_indices`), so it is the one place that writes it.
    """
    return json.dumps(list(indices))


def new_job_id() -> str:
    """A fresh job id: sortable by time, unique across hosts."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:8]


_RETRY_ROUND = re.compile(r"r(\d+)-")


def retry_round(batch_key: str) -> int:
    """0 for a planned batch, N for a batch of retry round N (key ``rN-...``)."""
    match = _RETRY_ROUND.match(batch_key)
    return int(match.group(1)) if match else 0


def retry_prefix(round_number: int) -> str:
    """The batch-key prefix of retry round ``round_number`` (read by :func:`retry_round`)."""
    return f"r{round_number}-b"
