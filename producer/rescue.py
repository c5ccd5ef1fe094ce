"""Finding batches the broker lost, and sending them again.

kombu's Redis transport takes a message off the queue (``BRPOP``) before it records it as
unacknowledged; a worker node killed between the two loses that message for good
(celery/kombu#305). The visibility timeout cannot bring it back: it was never in
``unacked``. The job store knows every planned batch, so a waiter can tell: a batch that is
not committed, not in the queue and not unacknowledged anywhere, on two checks a few
seconds apart while the job made no progress, is lost. It is sent again (a flat chord of
the lost batches whose callback is the same idempotent gather); a batch wrongly taken for
lost would only run twice, which exactly-once commits make harmless.

Only Redis brokers are inspected (RabbitMQ redelivers what a dead consumer held), and only
while the queue and the unacknowledged messages are few enough to read
(:data:`SCAN_LIMIT`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from curator_worker.compat.kombu import BrokerKeys, message_task_args, unacked_envelope
from curator_worker.config import Settings, celery_config
from curator_worker.contract.planning import Batch
from curator_worker.messaging import RUN_BATCH
from curator_worker.store import JobStatus, JobStore

log = logging.getLogger(__name__)

#: Seconds without progress before the broker is inspected for lost batches.
STALL_SECONDS = 10.0
#: Seconds between two inspections; a batch missing from both is lost.
CONFIRM_SECONDS = 5.0
#: Most queued plus unacknowledged messages read in one inspection.
SCAN_LIMIT = 20_000


def _batch_of(envelope: Any, job_id: str) -> str | None:
    """The batch key of a ``curator.run_batch`` message of ``job_id`` (else ``None``)."""
    try:
        task, args = message_task_args(envelope)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None
    if task == RUN_BATCH and isinstance(args, list) and len(args) >= 2 and args[0] == job_id:
        return str(args[1])
    return None


def missing_batches(
    broker: redis.Redis, job_id: str, queue: str, uncommitted: set[str],
    keys: BrokerKeys | None = None,
) -> set[str] | None:
    """Batches of ``uncommitted`` that are neither queued on ``queue`` nor unacknowledged.

    The queue's priority lists count as queued. ``keys``: kombu's key names for the
    broker's transport options (default: kombu's defaults). ``None`` when the broker holds
    more than :data:`SCAN_LIMIT` messages to read.
    """
    keys = keys or BrokerKeys()
    lists = keys.queue_lists(queue)
    if sum(broker.llen(name) for name in lists) + broker.hlen(keys.unacked) > SCAN_LIMIT:
        return None
    present: set[str] = set()
    for name in lists:
        for raw in broker.lrange(name, 0, -1):
            key = _batch_of(json.loads(raw), job_id)
            if key is not None:
                present.add(key)
    for raw in broker.hvals(keys.unacked):
        try:
            envelope = unacked_envelope(raw)
        except (ValueError, IndexError, TypeError):
            continue
        key = _batch_of(envelope, job_id)
        if key is not None:
            present.add(key)
    return uncommitted - present


class LostBatchRescue:
    """Watches a waited-on job; re-sends batches the broker lost (see module doc).

    Parameters
    ----------
    store : JobStore
        The job store.
    settings : Settings
        The cluster (its broker is inspected when it is Redis).
    job_id : str
        The job.
    """

    def __init__(self, store: JobStore, settings: Settings, job_id: str) -> None:
        self.store, self.settings, self.job_id = store, settings, job_id
        url = settings.broker_url or ""
        self.enabled = url.startswith(("redis://", "rediss://"))
        self._broker: redis.Redis | None = None
        self._progress: tuple[int, int] | None = None
        self._quiet_since = time.monotonic()
        self._last_check = 0.0
        self._suspects: set[str] | None = None
        self.keys = BrokerKeys.from_options(
            celery_config(settings).get("broker_transport_options"))
        #: Batch keys re-sent so far.
        self.resent: list[str] = []

    def _client(self) -> redis.Redis:
        if self._broker is None:
            self._broker = redis.Redis.from_url(self.settings.broker_url or "",
                                                socket_timeout=10, socket_connect_timeout=5)
        return self._broker

    def check(self, status: JobStatus) -> list[str]:
        """Call on every poll; returns the batch keys re-sent by this call (usually none)."""
        if not self.enabled or status.is_final:
            return []
        now = time.monotonic()
        progress = (status.processed, status.committed_batches)
        if progress != self._progress:
            self._progress, self._quiet_since, self._suspects = progress, now, None
            return []
        if now - self._quiet_since < STALL_SECONDS or now - self._last_check < CONFIRM_SECONDS:
            return []
        self._last_check = now
        try:
            pending = self.store.uncommitted(self.job_id)
            missing = missing_batches(self._client(), self.job_id,
                                      status.queue or self.settings.queue, set(pending),
                                      self.keys)
        except redis.RedisError as exc:
            log.debug("job %s: cannot inspect the broker: %s", self.job_id, exc)
            return []
        if missing is None:
            return []
        lost = sorted(missing & self._suspects) if self._suspects is not None else []
        self._suspects = missing
        if not lost:
            return []
        self._resend([Batch(key, pending[key]) for key in lost], status.queue)
        self._suspects, self._quiet_since = None, now
        return lost

    def _resend(self, batches: list[Batch], queue: str) -> None:
        from producer.clients import clients_for
        from producer.submit import publish_chord

        log.warning(
            "job %s: %d batch(es) left the queue but reached no worker (a worker node died "
            "while receiving them): sending them again: %s", self.job_id, len(batches),
            ", ".join(b.key for b in batches[:10]) + (" ..." if len(batches) > 10 else ""),
        )
        app, _ = clients_for(self.settings)
        publish_chord(app, self.job_id, batches, queue or self.settings.queue)
        self.resent += [b.key for b in batches]

    def close(self) -> None:
        """Close the broker connection."""
        if self._broker is not None:
            self._broker.close()
