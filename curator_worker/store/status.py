"""A job's states and the snapshot of one job (:class:`JobStatus`) that every view reads."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from curator_worker.store.attempts import HOST, pid_alive

#: States of a job. The last four are final.
RUNNING = "running"
SUCCEEDED = "succeeded"
PARTIAL = "partial"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL_STATES = frozenset({SUCCEEDED, PARTIAL, FAILED, CANCELLED})

#: Seconds between heartbeats of a producer publishing a job's tasks, and the age after
#: which a publishing producer is taken as dead (its submit did not finish).
PUBLISH_HEARTBEAT = 2.0
PUBLISH_STALE = 10.0


def publishing_marker(since: float, seen: float) -> str:
    """The ``publishing`` field of a job while this process publishes its tasks."""
    return json.dumps({"pid": os.getpid(), "host": HOST, "since": since, "seen": seen})


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
        return self.publishing.get("host") == HOST and isinstance(pid, int) \
            and not pid_alive(pid)

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
