"""What one index produced: :class:`IndexResult` (the sink's paths, or the error as
:func:`error_record` describes it). Every backend, the job store and the metrics store
speak it; it depends on nothing else of the project."""

from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass
from typing import Any

#: This machine's name, in error records and commit records.
HOSTNAME = socket.gethostname()


@dataclass(slots=True)
class IndexResult:
    """The outcome of one index: the sink's paths, or the error."""

    index: int
    paths: list[str] | None = None
    error: dict[str, Any] | None = None
    seconds: float = 0.0
    attempt: int = 1
    tries: int = 1
    stages: dict[str, float] | None = None
    finished: float | None = None
    peak_mb: float | None = None

    @property
    def ok(self) -> bool:
        """True when the index succeeded."""
        return self.error is None

    def as_record(self) -> dict[str, Any]:
        """The JSON record stored in the job store (seconds in whole µs, ``end`` in ms)."""
        record: dict[str, Any] = {"index": self.index, "seconds": round(self.seconds * 1e6) / 1e6,
                                  "attempt": self.attempt}
        if self.tries > 1:
            record["tries"] = self.tries
        if self.error is not None:
            record["error"] = self.error
            return record
        record["paths"] = self.paths
        if self.stages:
            record["stages"] = {k: round(v, 6) for k, v in self.stages.items()}
        if self.finished is not None:
            record["end"] = round(self.finished * 1e3) / 1e3
        if self.peak_mb is not None:
            record["peak_mb"] = round(self.peak_mb, 3)
        return record


def error_record(
    exc: BaseException, attempt: int = 1, kind: str = "error", tries: int = 1
) -> dict[str, Any]:
    """A JSON-ready description of ``exc``: kind, type, message, traceback, attempts, host, pid.

    ``kind`` is ``error``, ``timeout``, ``memory``, ``batch_time_limit``, ``crash`` or
    ``systemic``; ``attempt`` is the batch's delivery, ``tries`` the index's own attempts.
    """
    return {
        "kind": kind,
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
        "attempt": attempt,
        "tries": tries,
        "host": HOSTNAME,
        "pid": os.getpid(),
    }
