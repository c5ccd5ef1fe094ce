"""The import path of the job store before it became the :mod:`curator_worker.store` package.

Code written against earlier releases (``from curator_worker.jobs import JobStore``) keeps
working; new code imports from :mod:`curator_worker.store` (or ``Job`` and ``JobStore``
from :mod:`curator_worker`).
"""

from curator_worker.store import (
    ALREADY_COMMITTED,
    CANCELLED,
    COMMITTED,
    COMMITTED_LAST,
    FAILED,
    FINAL_STATES,
    GATHER_LOCK_TTL,
    PARTIAL,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStatus,
    JobStore,
    connect,
    new_job_id,
)
from curator_worker.store.attempts import ATTEMPT_MARK_TTL, AttemptMark, BatchStart
from curator_worker.store.keys import JOBS_INDEX, NODES_KEY, PREFIX, plan_entry
from curator_worker.store.nodes import NODE_TTL, announce_node, forget_node, live_nodes
from curator_worker.store.reads import collector_paused
from curator_worker.store.status import PUBLISH_HEARTBEAT, PUBLISH_STALE

__all__ = [
    "ALREADY_COMMITTED", "ATTEMPT_MARK_TTL", "CANCELLED", "COMMITTED", "COMMITTED_LAST",
    "FAILED", "FINAL_STATES", "GATHER_LOCK_TTL", "JOBS_INDEX", "NODES_KEY", "NODE_TTL",
    "PARTIAL", "PREFIX", "PUBLISH_HEARTBEAT", "PUBLISH_STALE", "RUNNING", "SUCCEEDED",
    "AttemptMark", "BatchStart", "Job", "JobStatus", "JobStore", "announce_node",
    "collector_paused", "connect", "forget_node", "live_nodes", "new_job_id", "plan_entry",
]
