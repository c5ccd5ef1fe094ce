"""How a batch treats failures and limits: retries, timeouts, memory, redelivery cap.

A job's options (``curator-submit --retries 3 --index-timeout 60 ...``) become one
:class:`BatchPolicy` that every batch of the job runs under.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Exception classes retried by default: failures that often go away on their own.
DEFAULT_TRANSIENT = ("OSError", "ConnectionError", "TimeoutError")
#: Deliveries of one batch before its unfinished indices are recorded failed.
DEFAULT_MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient errors of one index with exponential backoff and jitter.

    Parameters
    ----------
    retries : int
        Extra attempts after the first (0 = no retry).
    transient : tuple[str, ...]
        Names of exception classes (or ``module.Class``) treated as transient; subclasses
        match too.
    backoff : float
        Delay before the first retry, in seconds; doubles on every retry.
    max_backoff : float
        Upper bound of one delay.
    """

    retries: int = 0
    transient: tuple[str, ...] = DEFAULT_TRANSIENT
    backoff: float = 0.5
    max_backoff: float = 30.0

    def is_transient(self, exc: BaseException) -> bool:
        """True when ``exc`` is an instance of a class named in :attr:`transient`."""
        names = set(self.transient)
        return any(
            cls.__name__ in names or f"{cls.__module__}.{cls.__qualname__}" in names
            for cls in type(exc).__mro__
        )

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """True when attempt number ``attempt`` failed with ``exc`` and may be retried."""
        return attempt <= self.retries and self.is_transient(exc)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (jitter ±50 %)."""
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.5)


@dataclass(frozen=True)
class BatchPolicy:
    """Limits and retries for the indices of a batch.

    Parameters
    ----------
    index_timeout : float | None
        Seconds one index may run before it is stopped and recorded as ``timeout``.
    batch_time_limit : float | None
        Seconds a batch may run; indices not done by then are recorded failed.
    index_memory_mb : float | None
        Extra address space one index may allocate (MiB) before ``MemoryError``.
    max_attempts : int
        Deliveries of a batch (worker killed mid-batch) before its unfinished indices are
        recorded failed, so a batch that always kills its worker cannot loop forever.
    retry : RetryPolicy
        Retries of transient errors.
    """

    index_timeout: float | None = None
    batch_time_limit: float | None = None
    index_memory_mb: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> BatchPolicy:
        """The policy stored in a job's options (missing keys take defaults)."""
        transient = options.get("retry_on") or DEFAULT_TRANSIENT
        return cls(
            index_timeout=options.get("index_timeout") or None,
            batch_time_limit=options.get("batch_time_limit") or None,
            index_memory_mb=options.get("index_memory_mb") or None,
            max_attempts=int(options.get("max_attempts") or DEFAULT_MAX_ATTEMPTS),
            retry=RetryPolicy(
                retries=int(options.get("retries") or 0),
                transient=tuple(transient),
                backoff=float(options.get("retry_backoff") or 0.5),
            ),
        )

    def as_options(self) -> dict[str, Any]:
        """The job options that give this policy back through :meth:`from_options`."""
        return {
            "index_timeout": self.index_timeout,
            "batch_time_limit": self.batch_time_limit,
            "index_memory_mb": self.index_memory_mb,
            "max_attempts": self.max_attempts,
            "retries": self.retry.retries,
            "retry_on": list(self.retry.transient),
            "retry_backoff": self.retry.backoff,
        }
