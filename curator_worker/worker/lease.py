"""Batch leases: a batch that keeps making progress keeps its message from coming back.

On a Redis broker kombu emulates acknowledgements: a delivered message is listed in the
``unacked_index`` sorted set with its delivery time, and a sweep puts every message older
than the visibility timeout back in the queue, whether or not its worker is still running
it (celery/celery#5935). A batch longer than the timeout then runs twice, and again every
timeout. The producer records each batch's delivery tag (in the broker's Redis, under
:func:`~curator_worker.store.keys.delivery_tags_key`, for messages it publishes from a
template); while a batch runs, its
worker process moves that time forward after an index finishes, at most every quarter of
the timeout (:class:`LeaseRenewal`). A process that hangs inside one index stops renewing,
so its batch still comes back; so does the batch of a host that died.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from curator_worker.compat.kombu import DEFAULT_UNACKED_INDEX, renew_unacked
from curator_worker.store.keys import delivery_tags_key

log = logging.getLogger(__name__)

#: kombu's default name of the sorted set of unacknowledged messages (Redis transport;
#: the :class:`~curator_worker.compat.kombu.BrokerKeys` gives it for other transport options).
UNACKED_INDEX_KEY = DEFAULT_UNACKED_INDEX


class LeaseRenewal:
    """Renews one running batch's message in the broker, called after each index.

    Parameters
    ----------
    client : redis.Redis
        A client of the broker's Redis.
    job_id, batch_key : str
        The batch.
    visibility_timeout : float
        The broker's visibility timeout (seconds); renewals come every quarter of it.
    index_key : str
        kombu's sorted set of unacknowledged messages (:attr:`BrokerKeys.unacked_index`).
    tags_ttl : int
        Seconds the job's delivery tags are kept (``result_expires``): each renewal starts
        that time again, so the tags of a job running longer than it do not expire while
        its batches still need them (0: leave the expiry alone).
    """

    def __init__(self, client: Any, job_id: str, batch_key: str, visibility_timeout: float,
                 index_key: str = UNACKED_INDEX_KEY, tags_ttl: int = 0) -> None:
        self.client, self.job_id, self.batch_key = client, job_id, batch_key
        self.every = max(0.5, visibility_timeout / 4)
        self.index_key = index_key
        self.tags_ttl = int(tags_ttl)
        self.last = time.monotonic()
        self.tag: str | None = None
        self.active = True

    def __call__(self) -> None:
        """Renew if a quarter of the timeout passed since the start or the last renewal."""
        now = time.monotonic()
        if not self.active or now - self.last < self.every:
            return
        self.last = now
        try:
            if self.tag is None:  # looked up once, late: the producer writes it after publishing
                raw = self.client.hget(delivery_tags_key(self.job_id), self.batch_key)
                if raw is None:  # published another way: nothing to renew
                    self.active = False
                    return
                self.tag = raw.decode() if isinstance(raw, bytes) else str(raw)
            renew_unacked(self.client, self.index_key, self.tag, time.time())
            if self.tags_ttl > 0:
                self.client.expire(delivery_tags_key(self.job_id), self.tags_ttl)
        except Exception as exc:  # noqa: BLE001 - a lease is best effort; the batch goes on
            log.debug("job %s batch %s: lease not renewed: %s", self.job_id, self.batch_key,
                      exc)
