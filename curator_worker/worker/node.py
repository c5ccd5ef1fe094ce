"""This worker node's life in the cluster, through Celery's signals.

- Logging: every log line a worker writes carries the job, batch and index being
  processed (:mod:`curator_worker.worker.log_context`).
- The live-node registry: a node announces its name, pool size and queues when ready and
  on every heartbeat, so producers size batches for the cluster
  (:mod:`curator_worker.store.nodes`), and leaves it when it shuts down.

Imported with the tasks (:mod:`curator_worker.worker.tasks`), which connects the handlers.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    heartbeat_sent,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from curator_worker.compat.celery import worker_node
from curator_worker.config import Settings
from curator_worker.store import JobStore, connect
from curator_worker.store.nodes import announce_node, forget_node
from curator_worker.worker import log_context

log = logging.getLogger(__name__)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_with_context(logger: logging.Logger, **_: Any) -> None:
    """Every worker log line carries the job, batch and index being processed."""
    log_context.install(logger)


_node: dict[str, Any] = {}


@worker_ready.connect
def _node_ready(sender: Any, **_: Any) -> None:
    """Announce this node (name, pool size, queues) so producers size batches for it."""
    node = worker_node(sender)
    _node.update(name=node.name, concurrency=node.concurrency, queues=node.queues,
                 task_events=node.task_events)
    _heartbeat()


@heartbeat_sent.connect
def _heartbeat(**_: Any) -> None:
    """Refresh this node's entry in the live-node registry (every worker heartbeat)."""
    if not _node:
        return
    try:
        announce_node(_node_store().client, _node["name"], _node["concurrency"], _node["queues"],
                      _node["task_events"])
    except Exception:  # noqa: BLE001 - sizing hints must never disturb the worker
        log.debug("could not announce node", exc_info=True)


@worker_shutdown.connect
def _node_gone(**_: Any) -> None:
    if _node:
        try:
            forget_node(_node_store().client, _node["name"])
        except Exception:  # noqa: BLE001
            log.debug("could not remove node", exc_info=True)


@lru_cache(maxsize=1)
def _node_store() -> JobStore:
    """The worker main process's own job store connection (heartbeats only).

    It fails fast, without retries: heartbeats run in the node's event loop, and a client
    riding out an outage there froze the whole node (no reconnecting, no pool upkeep) for
    as long as the broker was down.
    """
    settings = Settings.from_env()
    url = settings.effective_job_store_url or ""
    return JobStore(connect(url, timeout=2.0, retries=0), ttl=settings.job_ttl)



@worker_process_init.connect
def _not_the_node(**_: Any) -> None:
    """A prefork child: heartbeats belong to the node's main process."""
    _node.clear()
