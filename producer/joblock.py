"""One job-control command at a time per job: a Redis lock with a token and an expiry.

``curator-jobs retry``, ``resume`` and ``cancel`` each read a job's state, then change it and
maybe publish batches. Two of them at once on one job (two terminals, a retry loop in a
script) would both see a finished job with failures and both plan a retry round: the job
then waits for batches no one will commit. :func:`job_control_lock` makes the second one
fail at once with one clear line instead; the lock expires on its own if its holder dies.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from curator_worker.errors import JobControlConflictError
from curator_worker.store import JobStore, scripts
from curator_worker.store.keys import job_key

#: Seconds a job-control lock outlives a holder that died without releasing it.
LOCK_SECONDS = 120



def lock_key(job_id: str) -> str:
    """The Redis key of ``job_id``'s job-control lock."""
    return job_key(job_id, "control-lock")


@contextmanager
def job_control_lock(store: JobStore, job_id: str, action: str,
                     seconds: int = LOCK_SECONDS) -> Iterator[None]:
    """Hold ``job_id``'s job-control lock while the block runs.

    Parameters
    ----------
    store : JobStore
        The job store the job lives in.
    job_id : str
        The job.
    action : str
        What the holder does (``retry``, ``resume``, ``cancel``), shown to a loser.
    seconds : int
        Expiry of the lock, should its holder die.

    Raises
    ------
    JobControlConflictError
        If another job-control command holds the lock.
    """
    token = f"{uuid.uuid4().hex} {action} {socket.gethostname()}/{os.getpid()}"
    key = lock_key(job_id)
    client: redis.Redis = store.client
    if not client.set(key, token, nx=True, ex=seconds):
        held = client.get(key)
        other = held.decode(errors="replace").split(" ")[1] if held else "job-control command"
        left = client.ttl(key)
        expires = (f" (or, if it died, in {left} s when its lock expires)"
                   if left and left > 0 else "")
        raise JobControlConflictError(
            f"another {other} of job {job_id} is in progress; try again when it has "
            f"finished{expires}."
        )
    try:
        yield
    finally:
        # only if it still holds our token (it may have expired and been retaken)
        scripts.register(client, "release_lock")(keys=[key], args=[token])
