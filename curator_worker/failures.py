"""Failed indices grouped by error: what ``curator-jobs failures`` and the dashboard show.

A job that fails 2,000 indices with the same exception has one problem, not 2,000. The
job store keeps one error record per failed index (:meth:`JobStore.failures
<curator_worker.store.JobStore.failures>`); :func:`group_failures` folds them into groups
of the same exception type and message, where messages that differ only in numbers
(``"bad value at index 7"``, ``"... index 31"``) are the same error. Each group keeps its
indices, compressed as ranges by :func:`format_ranges` (``3-7,12``, the form
``--indices`` reads), and the traceback of its first index.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_HEX = re.compile(r"0x[0-9a-fA-F]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def format_ranges(indices: Iterable[int]) -> str:
    """``indices`` as sorted, comma-separated inclusive ranges.

    Parameters
    ----------
    indices : Iterable[int]
        Any order, duplicates allowed.

    Returns
    -------
    str
        The form ``curator-submit --indices`` reads; empty for no indices.

    Examples
    --------
    >>> format_ranges([12, 3, 4, 5, 6, 7, 5])
    '3-7,12'
    >>> format_ranges([1, 2, 9])
    '1-2,9'
    """
    ordered = sorted(set(indices))
    parts: list[str] = []
    start = prev = None
    for index in ordered:
        if prev is not None and index == prev + 1:
            prev = index
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = index
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def shorten_ranges(ranges: str, limit: int = 400) -> str:
    """``ranges`` cut after the last whole range that fits in ``limit`` characters.

    Examples
    --------
    >>> shorten_ranges("1-3,7,9-12", 6)
    '1-3,7,…'
    """
    if len(ranges) <= limit:
        return ranges
    return ranges[: ranges.rfind(",", 0, limit) + 1] + "…"


def message_pattern(message: str) -> str:
    """The first line of ``message`` with every number replaced by ``<n>``.

    Two errors with the same pattern (and type) are one group.

    Examples
    --------
    >>> message_pattern("synthetic failure at index 7\\nmore")
    'synthetic failure at index <n>'
    >>> message_pattern("object at 0x7f3a12 failed after 2.5 s")
    'object at <n> failed after <n> s'
    """
    first = next((line for line in str(message or "").splitlines() if line.strip()), "")
    return _NUMBER.sub("<n>", _HEX.sub("<n>", first.strip()))


@dataclass
class FailureGroup:
    """Failed indices that failed with the same error.

    Attributes
    ----------
    type : str
        Exception class name.
    message : str
        The message of the first index when every index has the same one, else the
        shared pattern (numbers shown as ``<n>``).
    indices : list[int]
        Sorted.
    kinds : list[str]
        Failure kinds met (``error``, ``timeout``, ``memory``, ``crash``, ...), sorted.
    hosts : list[str]
        Hosts the failures happened on, sorted.
    traceback : str
        The traceback of the first index (empty when none was recorded).
    example : int
        The index whose message and traceback are shown.
    """

    type: str
    message: str
    indices: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    traceback: str = ""
    example: int = -1

    @property
    def count(self) -> int:
        """Number of indices in the group."""
        return len(self.indices)

    @property
    def ranges(self) -> str:
        """The indices as ranges (:func:`format_ranges`)."""
        return format_ranges(self.indices)

    def as_dict(self, with_traceback: bool = False) -> dict[str, Any]:
        """JSON-ready form; the traceback only when ``with_traceback``."""
        out: dict[str, Any] = {
            "type": self.type,
            "message": self.message,
            "count": self.count,
            "ranges": self.ranges,
            "indices": list(self.indices),
            "kinds": list(self.kinds),
            "hosts": list(self.hosts),
            "example": self.example,
        }
        if with_traceback:
            out["traceback"] = self.traceback
        return out


def group_failures(failures: Mapping[int, Mapping[str, Any]]) -> list[FailureGroup]:
    """Group per-index error records by exception type and message pattern.

    Parameters
    ----------
    failures : Mapping[int, Mapping]
        Index -> error record (``type``, ``message``, ``traceback``, ``kind``, ``host``), as
        :meth:`JobStore.failures <curator_worker.store.JobStore.failures>` returns.

    Returns
    -------
    list[FailureGroup]
        Largest group first (ties: lowest first index first).

    Examples
    --------
    >>> groups = group_failures({
    ...     7: {"type": "RuntimeError", "message": "bad item 7"},
    ...     8: {"type": "RuntimeError", "message": "bad item 8"},
    ...     9: {"type": "KeyError", "message": "'x'"}})
    >>> [(g.type, g.message, g.ranges) for g in groups]
    [('RuntimeError', 'bad item <n>', '7-8'), ('KeyError', "'x'", '9')]
    """
    groups: dict[tuple[str, str], FailureGroup] = {}
    messages: dict[tuple[str, str], set[str]] = {}
    kinds: dict[tuple[str, str], set[str]] = {}
    hosts: dict[tuple[str, str], set[str]] = {}
    for index in sorted(failures):
        error = failures[index]
        kind_of_error = str(error.get("type") or "Error")
        message = str(error.get("message") or "")
        key = (kind_of_error, message_pattern(message))
        group = groups.get(key)
        if group is None:
            group = groups[key] = FailureGroup(
                type=kind_of_error, message=message.strip(),
                traceback=str(error.get("traceback") or ""), example=index)
            messages[key], kinds[key], hosts[key] = set(), set(), set()
        group.indices.append(index)
        messages[key].add(message.strip())
        if error.get("kind"):
            kinds[key].add(str(error["kind"]))
        if error.get("host"):
            hosts[key].add(str(error["host"]))
    for key, group in groups.items():
        if len(messages[key]) > 1:
            group.message = key[1]
        group.kinds = sorted(kinds[key])
        group.hosts = sorted(hosts[key])
    return sorted(groups.values(), key=lambda g: (-g.count, g.indices[0]))
