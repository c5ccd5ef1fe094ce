"""Per-index metrics and resume, as physicsnemo-curator users know them, on every backend.

A pipeline records (``track_metrics``, on by default) each index's stage timings, wall time,
peak memory and outcome in a SQLite store under ``db_dir``; ``pipeline.metrics`` reads them
back; ``run_pipeline(..., resume=True)`` skips what an earlier run of the same pipeline
completed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis

from curator_worker import (
    Filter,
    JobFailedError,
    Pipeline,
    PipelineError,
    PipelineMetrics,
    Sink,
    Source,
    run_pipeline,
)
from curator_worker.metrics import IndexMetrics, StageMetrics, pipeline_key
from curator_worker.metrics_store import MetricsStore
from tests.support.backends_dask import shared_client
from tests.support.compat_components import CsvSink, OffsetFilter, SquaresSource

# --------------------------------------------------------------------------- components


class Counted(Source[int]):
    """Indices 0..n-1; remembers which it was asked for; fails once on ``fail_once``."""

    name: ClassVar[str] = "Counted"
    description: ClassVar[str] = "ints"

    def __init__(self, n: int, fail_once: int | None = None) -> None:
        self.n = n
        self.fail_once = fail_once
        self.accessed: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Iterator[int]:
        self.accessed.append(index)
        if index == self.fail_once:
            self.fail_once = None
            raise RuntimeError(f"flaky index {index}")
        yield index


class Grow(Filter[int]):
    """Allocates about 1 MB per item (so peak memory shows)."""

    name: ClassVar[str] = "Grow it"
    description: ClassVar[str] = "allocates"

    def __call__(self, items: Iterator[int]) -> Iterator[int]:
        for item in items:
            block = bytearray(1 << 20)
            yield item + len(block) - len(block)


class Names(Sink[int]):
    name: ClassVar[str] = "Names"
    description: ClassVar[str] = "paths without files"

    def __call__(self, items: Iterator[int], index: int) -> list[str]:
        return [f"out/{index}-{item}" for item in items]


def counted(n: int = 6, **settings: Any) -> Pipeline:
    return Pipeline(source=Counted(n), filters=[Grow()], sink=Names(), **settings)


def squares(out: Path, n: int = 8, **settings: Any) -> Pipeline:
    """An importable pipeline (worker processes rebuild it)."""
    return Pipeline(source=SquaresSource(n=n), filters=[OffsetFilter(offset=1.0)],
                    sink=CsvSink(output_dir=str(out)), **settings)


# --------------------------------------------------------------------------- recording


def test_sequential_run_records_every_index_with_named_stages(tmp_path: Path) -> None:
    p = counted(db_dir=tmp_path / "db")
    assert run_pipeline(p) == [[f"out/{i}-{i}"] for i in range(6)]
    metrics = p.metrics
    assert isinstance(metrics, PipelineMetrics)
    assert [m.index for m in metrics.indices] == list(range(6))
    for m in metrics.indices:
        assert [s.name for s in m.stages] == ["source", "Grow it", "sink"]
        assert m.wall_time_ns > 0 and all(s.wall_time_ns >= 0 for s in m.stages)
        assert m.peak_memory_bytes >= 1 << 20  # the filter's block, traced
    assert metrics.total_wall_time_ns == sum(m.wall_time_ns for m in metrics.indices)
    assert p.db_path is not None and p.db_path.parent == tmp_path / "db"
    assert p.completed_indices == set(range(6)) and p.failed_indices == {}


def test_track_memory_off_records_no_peak(tmp_path: Path) -> None:
    p = counted(3, db_dir=tmp_path, track_memory=False)
    run_pipeline(p)
    assert [m.peak_memory_bytes for m in p.metrics.indices] == [0, 0, 0]


@pytest.mark.parametrize("backend", ["thread", "process_pool", "loky", "dask"])
def test_every_local_backend_records_the_indices_it_ran(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    p = squares(tmp_path / "out", n=8, db_dir=tmp_path / "db")
    extra = {"client": shared_client(request.config)} if backend == "dask" else {}
    run_pipeline(p, backend=backend, n_jobs=2, indices=[6, 1, 3, 4], **extra)
    metrics = p.metrics
    assert [m.index for m in metrics.indices] == [1, 3, 4, 6]
    for m in metrics.indices:
        assert [s.name for s in m.stages] == ["source", OffsetFilter.name, "sink"]
        assert m.wall_time_ns > 0 and m.peak_memory_bytes > 0
    assert p.output_paths_for_index(3) == [str(tmp_path / "out" / "sample_0003.csv")]


def test_pipeline_getitem_records_too(tmp_path: Path) -> None:
    p = counted(4, db_dir=tmp_path)
    assert p[2] == ["out/2-2"] and p[-1] == ["out/3-3"]
    assert [m.index for m in p.metrics.indices] == [2, 3]


def test_a_failing_index_is_recorded_as_failed(tmp_path: Path) -> None:
    p = Pipeline(source=Counted(5, fail_once=3), sink=Names(), db_dir=tmp_path)
    with pytest.raises(RuntimeError, match="flaky index 3"):
        run_pipeline(p)
    assert p.completed_indices == {0, 1, 2}
    assert p.failed_indices == {3: "RuntimeError: flaky index 3"}
    assert p.remaining_indices() == [4]


def test_parallel_failures_are_recorded(tmp_path: Path) -> None:
    p = Pipeline(source=Counted(5, fail_once=1), sink=Names(), db_dir=tmp_path)
    with pytest.raises(JobFailedError):
        run_pipeline(p, backend="thread", n_jobs=2)
    assert set(p.failed_indices) == {1}
    assert p.completed_indices == {0, 2, 3, 4}


def test_metrics_off_records_nothing_and_asking_is_a_runtime_error(tmp_path: Path) -> None:
    p = counted(3, db_dir=tmp_path, track_metrics=False)
    run_pipeline(p)
    p[0]
    assert list(tmp_path.iterdir()) == [] and p.db_path is None
    with pytest.raises(RuntimeError, match="track_metrics"):
        p.metrics  # noqa: B018
    with pytest.raises(PipelineError):
        p.completed_indices  # noqa: B018


def test_run_pipeline_db_dir_sets_where_the_store_is(tmp_path: Path) -> None:
    p = counted(2)
    run_pipeline(p, db_dir=tmp_path / "here")
    assert p.db_dir == tmp_path / "here"
    assert [f.suffix for f in (tmp_path / "here").glob("*.db")] == [".db"]
    assert len(p.metrics.indices) == 2


def test_default_store_folder_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CURATOR_DB_DIR", str(tmp_path / "env"))
    p = counted(2)
    run_pipeline(p)
    assert p.db_path == tmp_path / "env" / f"{pipeline_key(p)}.db"
    assert p.db_path.exists()


def test_db_file_overrides_db_dir(tmp_path: Path) -> None:
    p = counted(2, db_dir=tmp_path / "dir", db_file=tmp_path / "exact.sqlite")
    run_pipeline(p)
    assert (tmp_path / "exact.sqlite").exists() and not (tmp_path / "dir").exists()


def test_one_store_per_configuration(tmp_path: Path) -> None:
    a, b = squares(tmp_path, n=3, db_dir=tmp_path), squares(tmp_path, n=4, db_dir=tmp_path)
    assert a.db_path != b.db_path
    assert squares(tmp_path, n=3, db_dir=tmp_path).db_path == a.db_path


def test_each_pipeline_object_reports_its_own_run(tmp_path: Path) -> None:
    first, second = counted(4, db_dir=tmp_path), counted(4, db_dir=tmp_path)
    run_pipeline(first, indices=[0, 1])
    run_pipeline(second, indices=[3])
    assert [m.index for m in first.metrics.indices] == [0, 1]
    assert [m.index for m in second.metrics.indices] == [3]
    assert first.db_path == second.db_path


def test_an_unwritable_store_does_not_fail_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a folder")
    p = counted(2, db_dir=tmp_path / "file")
    with caplog.at_level(logging.WARNING, logger="curator_worker.metrics"):
        assert run_pipeline(p) == [["out/0-0"], ["out/1-1"]]
    assert "could not record metrics" in caplog.text


def test_metrics_export_to_json_and_csv(tmp_path: Path) -> None:
    p = counted(2, db_dir=tmp_path)
    run_pipeline(p)
    p.metrics.to_json(tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["num_indices"] == 2 and data["indices"][1]["index"] == 1
    p.metrics.to_csv(tmp_path / "m.csv")
    header, *rows = (tmp_path / "m.csv").read_text().splitlines()
    assert header.split(",")[:2] == ["index", "wall_time_ns"]
    assert "stage_Grow it_ns" in header.split(",") and len(rows) == 2
    again = IndexMetrics.from_dict(data["indices"][0])
    assert again == p.metrics.indices[0]


def test_metrics_aggregates() -> None:
    m = PipelineMetrics([IndexMetrics(0, [StageMetrics("source", 5)], 10, 7),
                         IndexMetrics(1, [StageMetrics("source", 1)], 30, 3)])
    assert (m.total_wall_time_ns, m.mean_index_time_ns, m.total_peak_memory_bytes) == (40, 20, 7)
    assert m.stage_totals_ns() == {"source": 6}
    assert PipelineMetrics().mean_index_time_ns == 0.0


def test_store_is_sqlite_readable_by_other_tools(tmp_path: Path) -> None:
    p = counted(3, db_dir=tmp_path)
    run_pipeline(p)
    rows = sqlite3.connect(p.db_path).execute(
        "SELECT idx, ok, paths FROM index_outcomes ORDER BY idx").fetchall()
    assert rows == [(0, 1, '["out/0-0"]'), (1, 1, '["out/1-1"]'), (2, 1, '["out/2-2"]')]


# --------------------------------------------------------------------------- resume


def test_resume_skips_what_an_earlier_run_completed(tmp_path: Path) -> None:
    run_pipeline(counted(6, db_dir=tmp_path), indices=[0, 1, 4])
    again = counted(6, db_dir=tmp_path)  # a new object: the same configuration
    results = run_pipeline(again, resume=True)
    assert results == [[f"out/{i}-{i}"] for i in range(6)]
    assert again.source.accessed == [2, 3, 5]
    assert [m.index for m in again.metrics.indices] == list(range(6))


def test_resume_reruns_an_index_that_failed(tmp_path: Path) -> None:
    source = Counted(5, fail_once=2)
    p = Pipeline(source=source, sink=Names(), db_dir=tmp_path)
    with pytest.raises(RuntimeError):
        run_pipeline(p)
    assert run_pipeline(p, resume=True) == [[f"out/{i}-{i}"] for i in range(5)]
    assert source.accessed == [0, 1, 2, 2, 3, 4]


def test_resume_with_nothing_left_runs_nothing(tmp_path: Path) -> None:
    run_pipeline(counted(3, db_dir=tmp_path))
    again = counted(3, db_dir=tmp_path, resume=True)  # the pipeline's own default
    assert run_pipeline(again, indices=[2, 0]) == [["out/2-2"], ["out/0-0"]]
    assert again.source.accessed == []


def test_resume_on_a_process_backend(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_pipeline(squares(out, n=8, db_dir=tmp_path), backend="process_pool", n_jobs=2,
                 indices=[0, 1, 2])
    for i in (0, 1, 2):
        (out / f"sample_{i:04d}.csv").unlink()  # proof they are not written again
    again = squares(out, n=8, db_dir=tmp_path)
    results = run_pipeline(again, backend="process_pool", n_jobs=2, resume=True)
    assert results == [[str(out / f"sample_{i:04d}.csv")] for i in range(8)]
    assert sorted(p.name for p in out.iterdir()) == [f"sample_{i:04d}.csv" for i in range(3, 8)]


def test_resume_needs_metrics(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="track_metrics"):
        run_pipeline(counted(2, track_metrics=False), resume=True)


def test_store_reset_forgets_a_run(tmp_path: Path) -> None:
    p = counted(3, db_dir=tmp_path)
    run_pipeline(p)
    p.reset()
    assert p.metrics.indices == []
    assert MetricsStore(p.db_path).completed() == {}


class SlowAfterTwo(Names):
    """Indices 0 and 1 are quick, the others slow: the threads' batches end apart."""

    def __call__(self, items: Iterator[int], index: int) -> list[str]:
        paths = super().__call__(items, index)
        time.sleep(0.01 if index < 2 else 0.06)
        return paths


def test_thread_backend_traces_memory_for_every_index(tmp_path: Path) -> None:
    """One thread's batch ending must not stop memory tracing under the others (peaks are
    the process's: threads share one tracer, so only their presence is checked)."""
    p = Pipeline(source=Counted(12), filters=[Grow()], sink=SlowAfterTwo(), db_dir=tmp_path)
    run_pipeline(p, backend="thread", n_jobs=3, batch_size=2)
    assert len(p.metrics.indices) == 12
    assert all(m.peak_memory_bytes > 0 for m in p.metrics.indices)


def test_a_copied_job_store_batch_reads_as_what_a_local_run_records(
    tmp_path: Path,
) -> None:
    """The celery backend's copy (a committed batch's blob, as is) reads back exactly as
    the same results recorded by a local backend (one row per batch) or one row per index
    (``pipeline[i]``): successes, a failure, stages, memory."""
    from curator_worker.metrics import record_of
    from curator_worker.outcome import IndexResult, error_record
    from curator_worker.store.batch_results import encode

    names = {"source": "source", "filter[0]:OffsetFilter": "offset", "sink": "sink"}
    results = [
        IndexResult(4, paths=["/o/4"], seconds=0.002),
        IndexResult(5, paths=["/o/5", "/o/5b"], seconds=0.003,
                    stages={"source": 0.001, "filter[0]:OffsetFilter": 0.0005, "sink": 0.0015},
                    peak_mb=1.5),
        IndexResult(6, error=error_record(ValueError("bad row"))),
        IndexResult(7, paths=[], seconds=0.004, tries=2),
    ]
    stores = [MetricsStore(tmp_path / f"{name}.db") for name in ("rows", "local", "copy")]
    stores[0].record("inv", [record_of(r, names) for r in results])
    stores[1].record_results("inv", results, names)
    stores[2].record_job_blobs("inv", [encode(results).blob.encode()], names)

    def reads(store: MetricsStore) -> tuple:
        return store.metrics("inv"), store.completed("inv"), store.failed("inv")

    assert reads(stores[2]) == reads(stores[1]) == reads(stores[0])
    metrics, completed, failed = reads(stores[2])
    assert [m.index for m in metrics.indices] == [4, 5, 7]
    assert completed == {4: ["/o/4"], 5: ["/o/5", "/o/5b"], 7: []}
    assert failed == {6: "ValueError: bad row"}
    assert metrics.indices[1] == IndexMetrics(
        5, [StageMetrics("source", 1_000_000), StageMetrics("offset", 500_000),
            StageMetrics("sink", 1_500_000)], 3_000_000, 1_572_864)


# --------------------------------------------------------------------------- batch rows


def _old_release_store(path: Path, rows: list[tuple]) -> None:
    """A store as earlier releases wrote it: table ``results`` only, one row per index."""
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE results (
                invocation TEXT NOT NULL, idx INTEGER NOT NULL, ok INTEGER NOT NULL,
                paths TEXT, error TEXT, wall_time_ns INTEGER NOT NULL DEFAULT 0,
                peak_memory_bytes INTEGER NOT NULL DEFAULT 0,
                stages TEXT NOT NULL DEFAULT '[]', finished REAL NOT NULL,
                PRIMARY KEY (invocation, idx));
            CREATE INDEX results_by_index ON results (idx, finished);""")
        conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def test_batch_rows_merge_with_per_index_rows_of_an_older_store(tmp_path: Path) -> None:
    """Local batches and job blobs are stored one row per batch; every read merges them
    with the per-index rows of a store written by an earlier release, latest record wins."""
    from curator_worker.outcome import IndexResult, error_record
    from curator_worker.store.batch_results import encode

    names = {"source": "source", "filter[0]:Grow": "Grow it", "sink": "sink"}
    now = time.time()
    _old_release_store(tmp_path / "m.db", [
        ("old", 0, 1, '["/old/0"]', None, 10, 20, '[["source", 5]]', now - 100),
        ("old", 1, 1, '["/old/1"]', None, 11, 0, "[]", now - 100),
        ("old", 2, 0, None, "KeyError: 'x'", 12, 0, "[]", now - 100),
        ("old", 5, 0, None, "OSError: disk", 13, 0, "[]", now + 3600),  # finished later
    ])
    store = MetricsStore(tmp_path / "m.db")
    # a local batch: 1 fails now, 2 and 5 succeed; indices not consecutive, out of order
    local = [
        IndexResult(5, paths=["/b/5"], seconds=0.25, stages={"source": 0.125, "sink": 0.5},
                    peak_mb=1.5),
        IndexResult(1, error=error_record(ValueError("bad"))),
        IndexResult(2, paths=None, seconds=0.0625),
    ]
    store.record_results("local", local, names)
    # a job: 3 fails in the planned batch, succeeds in its retry round; 4 fails twice
    fail = IndexResult(3, error=error_record(RuntimeError("first")))
    planned = encode([fail, IndexResult(4, error=error_record(RuntimeError("again")))]).blob
    retry = encode([IndexResult(3, paths=["/j/3"], seconds=0.003, tries=2),
                    IndexResult(4, error=error_record(RuntimeError("still")))]).blob
    assert store.record_job_blobs("job", iter([planned.encode(), retry]), names) == 2
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (4,)

    assert store.completed("old") == {0: ["/old/0"], 1: ["/old/1"]}
    assert store.failed("old") == {2: "KeyError: 'x'", 5: "OSError: disk"}
    assert store.completed("local") == {5: ["/b/5"], 2: []}
    assert store.failed("local") == {1: "ValueError: bad"}
    assert store.completed("job") == {3: ["/j/3"]}
    assert store.failed("job") == {4: "RuntimeError: still"}
    # over every run: 1 failed after the old success; 5's old failure finished last
    assert store.completed() == {0: ["/old/0"], 2: [], 3: ["/j/3"]}

    metrics = store.metrics("local")
    assert [m.index for m in metrics.indices] == [2, 5]
    assert metrics.indices[1] == IndexMetrics(
        5, [StageMetrics("source", 125_000_000), StageMetrics("sink", 500_000_000)],
        250_000_000, 1_572_864)
    assert store.metrics("old").indices == [IndexMetrics(0, [StageMetrics("source", 5)], 10, 20),
                                            IndexMetrics(1, [], 11, 0)]
    assert store.metrics("job").indices == [IndexMetrics(3, [], 3_000_000, 0)]

    store.adopt("resumed", [0, 1, 2, 3, 4])  # the latest success of each; 4 has none
    assert store.completed("resumed") == {0: ["/old/0"], 1: ["/old/1"], 2: [], 3: ["/j/3"]}
    assert [m.index for m in store.metrics("resumed").indices] == [0, 1, 2, 3]
    assert store.metrics("resumed").indices[0] == store.metrics("old").indices[0]

    with sqlite3.connect(store.path) as conn:  # readable without curator-worker
        seen = conn.execute("SELECT idx, ok, paths FROM index_outcomes WHERE invocation = ? "
                            "ORDER BY idx, ok", ("job",)).fetchall()
    assert seen == [(3, 0, None), (3, 1, '["/j/3"]'), (4, 0, None), (4, 0, None)]

    store.reset("job")
    assert store.completed("job") == {} and store.failed("job") == {}
    assert store.completed("local") == {5: ["/b/5"], 2: []}
    store.reset()
    assert store.completed() == {} and store.metrics("old").indices == []


def test_a_job_copy_keeps_the_order_of_its_blobs(tmp_path: Path) -> None:
    """Blobs copied in one call share a finish time: their order decides which record of
    an index is the latest."""
    from curator_worker.outcome import IndexResult, error_record
    from curator_worker.store.batch_results import encode

    ok = encode([IndexResult(7, paths=["/7"], seconds=0.001)]).blob
    bad = encode([IndexResult(7, error=error_record(RuntimeError("no")))]).blob
    store = MetricsStore(tmp_path / "m.db")
    store.record_job_blobs("first-ok", [ok, bad], {})
    store.record_job_blobs("first-bad", [bad, ok], {})
    assert store.failed("first-ok") == {7: "RuntimeError: no"}
    assert store.completed("first-bad") == {7: ["/7"]}


def test_an_unreadable_batch_row_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from curator_worker.outcome import IndexResult

    store = MetricsStore(tmp_path / "m.db")
    store.record_job_blobs("inv", ['{"v": 99}'], {})
    store.record_results("inv", [IndexResult(1, paths=["/1"], seconds=0.5)], {})
    with caplog.at_level(logging.WARNING, logger="curator_worker.metrics"):
        assert store.completed("inv") == {1: ["/1"]}
    assert "unreadable" in caplog.text


def test_local_runs_store_one_row_per_batch(tmp_path: Path) -> None:
    p = counted(6, db_dir=tmp_path)
    run_pipeline(p, backend="thread", n_jobs=2, batch_size=3)
    with sqlite3.connect(p.db_path) as conn:
        assert conn.execute("SELECT count(*), min(format) FROM batches").fetchone() == (
            2, "local-v1")
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (0,)
    assert p.completed_indices == set(range(6))


class FakeJobStore:
    """What ``record_job_metrics`` reads: a job's result blobs, streamed."""

    def __init__(self, blobs: list[str], fail_after: int | None = None) -> None:
        self.blobs, self.fail_after = blobs, fail_after

    def streamed_result_blobs(self, job_id: str) -> Iterator[bytes]:
        for n, blob in enumerate(self.blobs):
            if n == self.fail_after:
                raise redis.exceptions.ConnectionError("redis went away")
            yield blob.encode()


def test_the_celery_copy_stores_blobs_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curator_worker import metrics_store
    from curator_worker.backends.celery import record_job_metrics
    from curator_worker.outcome import IndexResult
    from curator_worker.store.batch_results import encode

    monkeypatch.setattr(metrics_store, "BLOBS_PER_TRANSACTION", 2)
    blobs = [encode([IndexResult(i, paths=[f"/{i}"], seconds=0.001)]).blob for i in range(5)]
    p = counted(6, db_dir=tmp_path)
    record_job_metrics(p, FakeJobStore(blobs), "job")
    assert [m.index for m in p.metrics.indices] == [0, 1, 2, 3, 4]
    assert p.output_paths_for_index(4) == ["/4"]

    q = counted(6, db_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        record_job_metrics(q, FakeJobStore(blobs, fail_after=3), "job")
    assert "could not copy its metrics" in caplog.text
    assert q.completed_indices == {0, 1}  # the transactions before the error stay
