"""The live-node registry: worker nodes announce themselves with heartbeats; a submit
checks that someone consumes its queue."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from curator_worker.store.keys import NODES_KEY

#: Seconds after its last heartbeat that a worker node is no longer counted as live.
NODE_TTL = 15.0


def announce_node(
    client: redis.Redis, node: str, concurrency: int, queues: list[str], task_events: bool = True
) -> None:
    """Record that worker ``node`` is alive with ``concurrency`` processes on ``queues``."""
    entry = {"concurrency": concurrency, "queues": queues, "ts": time.time(),
             "task_events": task_events}
    client.hset(NODES_KEY, node, json.dumps(entry))


def forget_node(client: redis.Redis, node: str) -> None:
    """Remove ``node`` from the live nodes (clean shutdown)."""
    client.hdel(NODES_KEY, node)


def live_nodes(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The nodes consuming ``queue`` that sent a heartbeat recently (their entries)."""
    now = time.time()
    entries = (json.loads(raw) for raw in client.hvals(NODES_KEY))
    return [e for e in entries
            if now - e.get("ts", 0) <= NODE_TTL and queue in e.get("queues", [])]

