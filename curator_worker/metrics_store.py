"""The metrics store: what pipeline runs recorded per index, in one SQLite file.

Writes are one row per *batch* (table ``batches``): a local backend's batch of results
as a columnar JSON text (:func:`encode_local_batch`, format ``local-v1``), or a celery
job's committed batch as the job store's own blob, copied as is (format ``job-v2``, see
:mod:`curator_worker.store.batch_results`). Nothing is decoded per index when recording:
a million indices' copy is a few hundred inserts. The read methods decode the batches
they need and merge them with the per-index rows of table ``results`` (written by earlier
releases, by ``pipeline[i]`` and by :meth:`MetricsStore.adopt`).

Every record carries its finish time; where an index has several, the latest wins
(batches of one write keep their order: a celery job's retry rounds come after its planned
batches). View ``index_outcomes`` lists every record's index, outcome and paths for other
SQLite tools.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curator_worker.metrics import (
    IndexMetrics,
    IndexRecord,
    MetricRow,
    PipelineMetrics,
    StageMetrics,
    rows_of,
)

if TYPE_CHECKING:
    from curator_worker.outcome import IndexResult

log = logging.getLogger("curator_worker.metrics")

#: ``batches.format`` of a local backend's batch (:func:`encode_local_batch`).
LOCAL_FORMAT = "local-v1"
#: ``batches.format`` of a job store batch blob (``batch_results`` format version 2).
JOB_FORMAT = "job-v2"

#: Batch rows inserted per transaction when copying a job's blobs (a million indices
#: are about 1,000 blobs of 33 kB; 64 at a time keep the producer's peak memory low).
BLOBS_PER_TRANSACTION = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    invocation TEXT NOT NULL,
    idx INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    paths TEXT,
    error TEXT,
    wall_time_ns INTEGER NOT NULL DEFAULT 0,
    peak_memory_bytes INTEGER NOT NULL DEFAULT 0,
    stages TEXT NOT NULL DEFAULT '[]',
    finished REAL NOT NULL,
    PRIMARY KEY (invocation, idx)
);
CREATE INDEX IF NOT EXISTS results_by_index ON results (idx, finished);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    invocation TEXT NOT NULL,
    finished REAL NOT NULL,
    format TEXT NOT NULL,
    names TEXT NOT NULL DEFAULT '{}',
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_invocation ON batches (invocation, finished, seq);
CREATE VIEW IF NOT EXISTS index_outcomes AS
    SELECT invocation, idx, ok, paths, finished FROM results
    UNION ALL
    SELECT b.invocation,
           CASE json_type(b.data, '$.index') WHEN 'object'
                THEN json_extract(b.data, '$.index.start') + p.key
                ELSE json_extract(b.data, '$.index[' || p.key || ']') END,
           p.type != 'null',
           CASE WHEN p.type = 'null' THEN NULL ELSE p.value END,
           b.finished
    FROM batches AS b, json_each(b.data, '$.paths') AS p;
"""

#: One index's record as read back: index, ok, paths (list, JSON text, or ``None`` when
#: it failed), error, wall time ns, peak memory bytes, stages (list of (name, ns) pairs,
#: or their JSON text).
Record = tuple[int, bool, Any, str | None, int, int, Any]


# --------------------------------------------------------------------------- batch formats


def _pack(index: list[int]) -> list[int] | dict[str, int]:
    first = index[0] if index else 0
    if index == list(range(first, first + len(index))):
        return {"start": first, "count": len(index)}
    return index


def _unpack(packed: list[int] | dict[str, int]) -> Sequence[int]:
    if isinstance(packed, dict):
        return range(packed["start"], packed["start"] + packed["count"])
    return packed


def error_text(error: Mapping[str, Any] | None) -> str:
    """``"Type: message"`` of an error record (what the store keeps of a failure)."""
    error = error or {}
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def encode_local_batch(results: Sequence[IndexResult]) -> str:
    """One columnar JSON text of a local batch's results (format ``local-v1``).

    Keys: ``index`` (``{"start", "count"}`` when consecutive), ``paths`` (``null`` for a
    failed index), ``seconds``, and when any index has them ``peak_mb`` and ``stages``
    (stage key -> seconds, mapped to names on reading), and ``errors`` (position ->
    ``"Type: message"``). Floats round-trip exactly, so reading gives what
    :func:`~curator_worker.metrics.record_of` gives.

    Examples
    --------
    >>> from curator_worker.outcome import IndexResult
    >>> encode_local_batch([IndexResult(3, ["a"], seconds=0.5)])
    '{"v": "local-v1", "index": {"start": 3, "count": 1}, "paths": [["a"]], "seconds": [0.5]}'
    """
    data: dict[str, Any] = {
        "v": LOCAL_FORMAT,
        "index": _pack([r.index for r in results]),
        "paths": [(r.paths or []) if r.error is None else None for r in results],
        "seconds": [r.seconds for r in results],
    }
    peaks = [r.peak_mb for r in results]
    if any(p is not None for p in peaks):
        data["peak_mb"] = peaks
    stages = [r.stages or None for r in results]
    if any(stages):
        data["stages"] = stages
    errors = {str(n): error_text(r.error) for n, r in enumerate(results) if r.error is not None}
    if errors:
        data["errors"] = errors
    return json.dumps(data)


def _named(stages: Mapping[str, float] | None, names: Mapping[str, str],
           scale: float = 1e9) -> list[tuple[str, int]]:
    return [(names.get(k, k), round(v * scale)) for k, v in (stages or {}).items()]


def _local_records(text: str, names: Mapping[str, str]) -> Iterator[Record]:
    data = json.loads(text)
    if data.get("v") != LOCAL_FORMAT:
        raise ValueError(f"not a {LOCAL_FORMAT} batch")
    count = len(data["paths"])
    peaks = data.get("peak_mb") or itertools.repeat(None, count)
    stages = data.get("stages") or itertools.repeat(None, count)
    errors = data.get("errors") or {}
    for n, (index, paths, seconds, peak, timed) in enumerate(zip(
            _unpack(data["index"]), data["paths"], data["seconds"], peaks, stages, strict=True)):
        error = errors.get(str(n)) if errors else None
        yield (index, error is None, paths if error is None else None, error,
               round(seconds * 1e9), round((peak or 0.0) * 2**20), _named(timed, names))


def _job_records(text: str, names: Mapping[str, str]) -> Iterator[Record]:
    """The records of a job store blob: what a local run records for the same results
    (the job store keeps whole microseconds, and peak memory in MB to 3 decimals)."""
    from curator_worker.store.batch_results import decode_metric_columns

    indices, paths, micros, more = decode_metric_columns(text)
    for n, (index, found, us) in enumerate(zip(indices, paths, micros, strict=True)):
        wall = round(us / 1e6 * 1e9)
        extra = more.get(str(n)) if more else None
        if extra is None:
            if found is not None:  # the usual index: a success, no extras
                yield (index, True, found, None, wall, 0, [])
                continue
            extra = {}
        if found is None:
            yield (index, False, None, error_text(extra.get("error")), wall, 0, [])
            continue
        yield (index, True, found, None, wall, round(float(extra.get("peak_mb", 0.0)) * 2**20),
               _named(extra.get("stages"), names))


_DECODERS = {LOCAL_FORMAT: _local_records, JOB_FORMAT: _job_records}


def _loaded(value: Any) -> Any:
    """A JSON column of a ``results`` row parsed; decoded batch values as they are."""
    return json.loads(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------- the store


class MetricsStore:
    """A SQLite file of per-index records, shared by the runs of one pipeline configuration.

    Safe to use from several threads; each process opens its own connection. Write
    transactions are short (one row per batch), readers never block writers (WAL).

    Parameters
    ----------
    path : str | os.PathLike
        The database file (its folder is created).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with conn:
                conn.executescript(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def close(self) -> None:
        """Close this process's connection (reopened on next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- writing ----------------------------------------------------------------------

    def record(self, invocation: str, records: Iterable[IndexRecord]) -> None:
        """Store ``records`` under ``invocation``, one row each (a later record of an
        index supersedes it)."""
        self.record_rows(invocation, rows_of(records))

    def record_rows(self, invocation: str, rows: Sequence[MetricRow]) -> None:
        """Store ready per-index rows (:data:`~curator_worker.metrics.MetricRow`) under
        ``invocation``, in one transaction."""
        if not rows:
            return
        now = time.time()
        with self._lock:
            conn = self._connection()
            with conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(invocation, *row, now) for row in rows])

    def record_results(self, invocation: str, results: Sequence[IndexResult],
                       names: Mapping[str, str]) -> None:
        """Store a local batch's results under ``invocation`` as one row.

        Parameters
        ----------
        invocation : str
            The pipeline's invocation id.
        results : Sequence[IndexResult]
            The batch's results (a later record of an index supersedes an earlier one).
        names : Mapping[str, str]
            Stage keys to stage names (:func:`~curator_worker.metrics.stage_names`).
        """
        if not results:
            return
        row = (invocation, time.time(), LOCAL_FORMAT, json.dumps(dict(names)),
               encode_local_batch(results))
        with self._lock:
            conn = self._connection()
            with conn:
                conn.execute("INSERT INTO batches (invocation, finished, format, names, data) "
                             "VALUES (?, ?, ?, ?, ?)", row)

    def record_job_blobs(self, invocation: str, blobs: Iterable[bytes | str],
                         names: Mapping[str, str]) -> int:
        """Store a celery job's committed batch blobs under ``invocation``, as they are.

        Parameters
        ----------
        invocation : str
            The pipeline's invocation id.
        blobs : Iterable[bytes | str]
            The job store's result blobs (``batch_results`` format 2), planned batches
            first, then retry rounds in order: they keep this order, so a retry's record of
            an index supersedes the earlier one. Consumed lazily,
            :data:`BLOBS_PER_TRANSACTION` per transaction.
        names : Mapping[str, str]
            Stage keys to stage names.

        Returns
        -------
        int
            The number of batches stored.
        """
        now, labels = time.time(), json.dumps(dict(names))  # one time: the order is seq's
        stored = 0
        source = iter(blobs)
        while True:
            chunk = [(invocation, now, JOB_FORMAT, labels,
                      blob.decode() if isinstance(blob, bytes) else blob)
                     for blob in itertools.islice(source, BLOBS_PER_TRANSACTION)]
            if not chunk:
                return stored
            with self._lock:
                conn = self._connection()
                with conn:
                    conn.executemany("INSERT INTO batches (invocation, finished, format, "
                                     "names, data) VALUES (?, ?, ?, ?, ?)", chunk)
            stored += len(chunk)

    # -- reading ----------------------------------------------------------------------

    def _records(self, conn: sqlite3.Connection, invocation: str | None,
                 other_than: str | None = None) -> Iterator[Record]:
        """Every record of ``invocation`` (of every run when ``None``; without those of
        ``other_than``), oldest first: ``results`` rows and decoded batches merged by
        finish time (batches of one write in the order written)."""
        where, args = "", ()
        if invocation is not None:
            where, args = "WHERE invocation = ?", (invocation,)
        elif other_than is not None:
            where, args = "WHERE invocation != ?", (other_than,)
        legacy = conn.execute(
            "SELECT finished, 0, 0, idx, ok, paths, error, wall_time_ns, peak_memory_bytes, "
            f"stages FROM results {where} ORDER BY finished", args)
        batches = conn.execute(
            f"SELECT finished, 1, seq, format, names, data FROM batches {where} "
            "ORDER BY finished, seq", args)
        for row in heapq.merge(legacy, batches, key=lambda r: r[:3]):
            if row[1] == 0:
                yield (row[3], bool(row[4]), *row[5:])
                continue
            decoder = _DECODERS.get(row[3])
            try:
                if decoder is None:
                    raise ValueError(f"unknown batch format {row[3]!r}")
                yield from decoder(row[5], json.loads(row[4]))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("metrics store %s: batch %d unreadable, skipped: %s",
                            self.path, row[2], exc)

    def _latest(self, invocation: str | None, ok_only: bool = False,
                other_than: str | None = None) -> dict[int, Record]:
        """Each index's latest record (its latest success with ``ok_only``)."""
        enabled = gc.isenabled()
        gc.disable()  # many small lists, no cycles: collections would walk them all
        try:
            with self._lock:
                records = self._records(self._connection(), invocation, other_than)
                if ok_only:
                    return {r[0]: r for r in records if r[1]}
                return {r[0]: r for r in records}
        finally:
            if enabled:
                gc.enable()

    def metrics(self, invocation: str) -> PipelineMetrics:
        """The completed indices of ``invocation``, in index order."""
        latest = self._latest(invocation)
        return PipelineMetrics([
            IndexMetrics(idx, [StageMetrics(n, ns) for n, ns in _loaded(stages)], wall, peak)
            for idx, ok, _, _, wall, peak, stages in sorted(latest.values()) if ok
        ])

    def completed(self, invocation: str | None = None) -> dict[int, list[str]]:
        """Index to sink paths of completed indices: of ``invocation``, or of any run.

        An index counts when its latest record (of ``invocation``, or over every run) is
        a success.
        """
        return {idx: _loaded(paths) for idx, (_, ok, paths, *_) in
                self._latest(invocation).items() if ok}

    def failed(self, invocation: str) -> dict[int, str]:
        """Index to ``"Type: message"`` of the failed indices of ``invocation``."""
        latest = self._latest(invocation)
        return {idx: latest[idx][3] for idx in sorted(latest) if not latest[idx][1]}

    def adopt(self, invocation: str, indices: Sequence[int]) -> None:
        """Copy the latest successful record of each of ``indices`` into ``invocation``.

        A resumed run's pipeline then reports the indices it skipped as its own.
        """
        wanted = set(indices)
        if not wanted:
            return
        found = self._latest(None, ok_only=True, other_than=invocation)
        rows: list[MetricRow] = []
        for idx in sorted(wanted & found.keys()):
            _, _, paths, _, wall, peak, stages = found[idx]
            rows.append((idx, 1, paths if isinstance(paths, str) else json.dumps(paths), None,
                         wall, peak, stages if isinstance(stages, str) else json.dumps(stages)))
        self.record_rows(invocation, rows)

    def reset(self, invocation: str | None = None) -> None:
        """Forget the records of ``invocation`` (of every run when ``None``)."""
        with self._lock:
            conn = self._connection()
            with conn:
                for table in ("results", "batches"):
                    if invocation is None:
                        conn.execute(f"DELETE FROM {table}")
                    else:
                        conn.execute(f"DELETE FROM {table} WHERE invocation = ?", (invocation,))
