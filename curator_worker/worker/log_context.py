"""Job, batch and index on every log line a worker writes while processing.

The batch task sets the context (:func:`batch_context`, :func:`set_index`); a
:class:`ContextFilter` on the worker's log handlers adds ``[job=… batch=… index=…]`` to each
record, whoever logs it (our code, the user's components, libraries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from curator_worker.compat.celery import CELERY_WORKER_LOG_FORMAT, set_worker_log_format

_job: ContextVar[str | None] = ContextVar("curator_job", default=None)
_batch: ContextVar[str | None] = ContextVar("curator_batch", default=None)
_index: ContextVar[int | None] = ContextVar("curator_index", default=None)

#: Log format of worker processes: Celery's, with the curator context in front of the message.
WORKER_LOG_FORMAT = CELERY_WORKER_LOG_FORMAT.replace("%(message)s", "%(curator)s%(message)s")


@contextmanager
def batch_context(job_id: str, batch_key: str) -> Iterator[None]:
    """Within the block, log records carry ``job_id`` and ``batch_key``."""
    job_token, batch_token = _job.set(job_id), _batch.set(batch_key)
    try:
        yield
    finally:
        _index.set(None)
        _job.reset(job_token)
        _batch.reset(batch_token)


def set_index(index: int | None) -> None:
    """The index now running (``None`` between indices)."""
    _index.set(index)


def current() -> str:
    """``"job=… batch=… index=… "`` for the running work, or ``""``."""
    job = _job.get()
    if job is None:
        return ""
    text = f"[job={job} batch={_batch.get()}"
    index = _index.get()
    if index is not None:
        text += f" index={index}"
    return text + "] "


class ContextFilter(logging.Filter):
    """Adds ``record.curator`` (the context prefix) to every record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.curator = current()
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put a :class:`ContextFilter` and :data:`WORKER_LOG_FORMAT` on ``logger``'s handlers."""
    set_worker_log_format(logger or logging.getLogger(), WORKER_LOG_FORMAT, ContextFilter)
