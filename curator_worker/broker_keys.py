"""The names kombu's Redis transport gives its keys: one source for every reader of them.

kombu keeps a queue's messages in a list named after the queue (priority steps other than
0 in ``<queue><sep><step>``), delivered but unacknowledged messages in the ``unacked`` hash
and their delivery times in the ``unacked_index`` sorted set; the transport options
``unacked_key``, ``unacked_index_key``, ``priority_steps`` and ``sep`` rename them, and
``global_keyprefix`` prefixes every key kombu writes. The lease renewal of a running batch
(:mod:`curator_worker.lease`) and the lost-batch rescue of a waiter
(:mod:`producer.rescue`) read those keys with a plain Redis client, so they take the names
from here, built from the same ``broker_transport_options`` the Celery app uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: kombu's defaults (``kombu.transport.redis.Channel``).
DEFAULT_UNACKED = "unacked"
DEFAULT_UNACKED_INDEX = "unacked_index"
DEFAULT_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class BrokerKeys:
    """Key names of kombu's Redis transport for given transport options.

    Examples
    --------
    >>> keys = BrokerKeys.from_options({"global_keyprefix": "p:"})
    >>> keys.unacked, keys.unacked_index, keys.queue_lists("q")[:2]
    ('p:unacked', 'p:unacked_index', ['p:q', 'p:q\\x06\\x163'])
    """

    prefix: str = ""
    unacked_name: str = DEFAULT_UNACKED
    unacked_index_name: str = DEFAULT_UNACKED_INDEX
    sep: str = DEFAULT_SEP
    priority_steps: Sequence[int] = DEFAULT_PRIORITY_STEPS

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> BrokerKeys:
        """The keys for ``broker_transport_options`` ``options`` (kombu's defaults if none)."""
        options = dict(options or {})
        return cls(
            prefix=str(options.get("global_keyprefix") or ""),
            unacked_name=str(options.get("unacked_key") or DEFAULT_UNACKED),
            unacked_index_name=str(options.get("unacked_index_key") or DEFAULT_UNACKED_INDEX),
            sep=str(options.get("sep") or DEFAULT_SEP),
            priority_steps=tuple(options.get("priority_steps") or DEFAULT_PRIORITY_STEPS),
        )

    @property
    def unacked(self) -> str:
        """The hash of delivered, unacknowledged messages (tag -> [message, ...])."""
        return self.prefix + self.unacked_name

    @property
    def unacked_index(self) -> str:
        """The sorted set of unacknowledged messages' delivery times (tag -> time)."""
        return self.prefix + self.unacked_index_name

    def queue_lists(self, queue: str) -> list[str]:
        """Every list holding ``queue``'s waiting messages: the queue's, then each priority
        step's."""
        return [self.prefix + queue] + [f"{self.prefix}{queue}{self.sep}{step}"
                                        for step in self.priority_steps if step]
