"""What a local run returns: :class:`RunResult`, the paths of each index plus the run's
failures, and the error records of failures the parent sees itself."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from curator_worker.outcome import HOSTNAME

log = logging.getLogger(__name__)


class RunResult(list):  # type: ignore[type-arg]
    """The sink paths of each index, in the caller's order, plus the run's failures.

    A ``list[list[str]]`` like every backend returns (it compares equal to a plain list);
    a failed index's entry is ``[]``. Local parallel backends return it; with the default
    ``on_error="raise"`` it is only returned when nothing failed.

    Attributes
    ----------
    run_id : str
        The run's id (the folder name of its shards).
    failures : dict[int, str]
        Failed index to ``"Type: message"`` (the same shape as
        :attr:`JobFailedError.failures`).
    errors : dict[int, dict]
        Failed index to its full record: ``kind`` (``error``, ``timeout`` or ``crash``),
        ``type``, ``message``, ``traceback``, ``host``, ``pid``.

    Examples
    --------
    >>> result = RunResult([["a.npz"], []], run_id="r1", errors={1: {"type": "E", "message": "m"}})
    >>> result == [["a.npz"], []], result.failures
    (True, {1: 'E: m'})
    """

    def __init__(
        self,
        paths: Sequence[list[str]] = (),
        *,
        run_id: str = "",
        errors: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(paths)
        self.run_id = run_id
        self.errors: dict[int, dict[str, Any]] = dict(errors or {})

    @property
    def failures(self) -> dict[int, str]:
        """Failed index to ``"Type: message"``."""
        return {i: describe(record) for i, record in self.errors.items()}

    @property
    def ok(self) -> bool:
        """True when no index failed."""
        return not self.errors


def describe(record: Mapping[str, Any]) -> str:
    """``"Type: message"`` of an error record."""
    return f"{record.get('type', 'Error')}: {record.get('message', '')}"


def failure_record(
    kind: str, type_name: str, message: str, pid: int | None = None
) -> dict[str, Any]:
    """An error record for a failure seen by the parent (a timeout, a crashed worker)."""
    return {
        "kind": kind,
        "type": type_name,
        "message": message,
        "traceback": "",
        "attempt": 1,
        "host": HOSTNAME,
        "pid": pid,
    }
