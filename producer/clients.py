"""Producer connections reused across jobs in one process: an app and a job store per cluster.

Building a Celery app (its result backend included) and connecting to the job store costs
tens of milliseconds, more than a small job takes to run. A process that submits many jobs
(``run_pipeline`` in a loop, a notebook, a service) pays it once per cluster: the clients
are kept per :class:`~curator_worker.config.Settings`, at most :data:`MAX_CLUSTERS` of them.

Before every reuse the job store's Redis is checked with one PING on a connection that does
not retry (at most ``timeout`` seconds), so a server that went away fails fast with the same
clear error as on first use, and one that restarted is reconnected. A forked child never
reuses its parent's connections.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from curator_worker.config import Settings
from curator_worker.messaging import create_app
from curator_worker.store import JobStore

log = logging.getLogger(__name__)

#: Clusters whose clients one process keeps (least recently used ones are closed).
MAX_CLUSTERS = 4


@dataclass
class _Clients:
    pid: int
    app: Celery
    store: JobStore
    probe: redis.Redis

    def close(self) -> None:
        for close in (self.app.close, self.store.client.close, self.probe.close):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
                log.debug("closing a cached client failed", exc_info=True)


_lock = threading.Lock()
_cache: OrderedDict[Settings, _Clients] = OrderedDict()


def _open(settings: Settings, timeout: float) -> _Clients:
    url = settings.effective_job_store_url
    store = JobStore.from_url(url, ttl=settings.job_ttl, timeout=timeout)  # checks with PING
    probe = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                 retry=Retry(NoBackoff(), 0))
    return _Clients(os.getpid(), create_app(settings), store, probe)


def _alive(entry: _Clients) -> bool:
    try:
        entry.probe.ping()
    except (redis.RedisError, OSError):
        return False
    return True


def clients_for(settings: Settings, timeout: float = 5.0) -> tuple[Celery, JobStore]:
    """The producer app and job store of the cluster ``settings`` points at (cached).

    Parameters
    ----------
    settings : Settings
        A configured cluster (``settings.require_cluster()`` passed).
    timeout : float
        Seconds to wait for the job store's Redis to answer.

    Raises
    ------
    BrokerUnavailableError
        When the job store's Redis does not answer (URL redacted).
    """
    with _lock:
        entry = _cache.pop(settings, None)
        if entry is not None and (entry.pid != os.getpid() or not _alive(entry)):
            if entry.pid == os.getpid():
                entry.close()
            entry = None
        if entry is None:
            entry = _open(settings, timeout)
        _cache[settings] = entry
        while len(_cache) > MAX_CLUSTERS:
            _, oldest = _cache.popitem(last=False)
            oldest.close()
        return entry.app, entry.store


def forget(settings: Settings) -> None:
    """Close and drop the cached clients of ``settings`` (e.g. an embedded cluster stopped)."""
    with _lock:
        entry = _cache.pop(settings, None)
    if entry is not None and entry.pid == os.getpid():
        entry.close()
