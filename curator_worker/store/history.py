"""A job's identity and history: its pipeline in one line, and its retries and resumes.

``curator-jobs list``, ``status`` and ``report`` show what a job ran (source → filters →
sink, with params) and what was done to it since it was submitted. Each retry and resume
is recorded when it is sent, with its time and batch count, in the job's record (field
``history``, a JSON list), under the job-control lock that serialises them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from curator_worker.store.job_store import JobStore

#: Most history entries kept per job (the oldest are dropped beyond it).
MAX_HISTORY = 200


def record_history(store: JobStore, job_id: str, action: str, **fields: Any) -> dict[str, Any]:
    """Append ``{"action": action, "at": now, **fields}`` to the job's history; return it.

    Callers hold the job-control lock (retry, resume, cancel run one at a time).
    """
    entry = {"action": action, "at": time.time(), **fields}
    entries = job_history(store, job_id)
    entries.append(entry)
    store.client.hset(store.key(job_id), "history", json.dumps(entries[-MAX_HISTORY:]))
    return entry


def job_history(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    """The job's retries and resumes, oldest first (empty for a job never touched)."""
    raw = store.client.hget(store.key(job_id), "history")
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict)]


def describe_history(entry: Mapping[str, Any]) -> str:
    """One line for a history entry.

    Examples
    --------
    >>> describe_history({"action": "retry", "at": 0, "round": 1, "indices": 5, "batches": 2})
    '1970-01-01 00:00:00 UTC retry 1: 5 indices in 2 batches'
    >>> describe_history({"action": "resume", "at": 0, "batches": 0})
    '1970-01-01 00:00:00 UTC resume: every batch was committed; gather re-sent'
    """
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(entry.get("at") or 0)))
    action = str(entry.get("action", "?"))
    batches = int(entry.get("batches") or 0)
    if action == "retry":
        return (f"{when} retry {entry.get('round', '?')}: {entry.get('indices', '?')} indices "
                f"in {batches} batches")
    if action == "resume":
        if not batches:
            return f"{when} resume: every batch was committed; gather re-sent"
        return f"{when} resume: re-sent {batches} uncommitted batches"
    return f"{when} {action}"


def _component_names(spec: Mapping[str, Any]) -> tuple[str, list[str], str]:
    def name(part: Any) -> str:
        return str(part.get("name", "?")) if isinstance(part, Mapping) else "?"

    filters = spec.get("filters") or []
    return (name(spec.get("source")), [name(f) for f in filters] if isinstance(filters, list)
            else [], name(spec.get("sink")))


def pipeline_summary(spec: Mapping[str, Any]) -> str:
    """``Source → Filter → Sink``: the class names of a spec's components.

    Examples
    --------
    >>> pipeline_summary({"source": {"name": "CsvRows"}, "filters": [{"name": "Stats"}],
    ...                   "sink": {"name": "NpzPerIndex"}})
    'CsvRows → Stats → NpzPerIndex'
    """
    source, filters, sink = _component_names(spec)
    return " → ".join([source, *filters, sink])


def pipeline_params(spec: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(role, class name, params)`` of each component, source first, sink last."""
    parts: list[tuple[str, Any]] = [("source", spec.get("source"))]
    parts += [("filter", f) for f in spec.get("filters") or []]
    parts.append(("sink", spec.get("sink")))
    return [(role, str(p.get("name", "?")), dict(p.get("params") or {}))
            for role, p in parts if isinstance(p, Mapping)]
