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
from curator_worker.metrics import IndexMetrics, MetricsStore, StageMetrics, pipeline_key
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
        "SELECT idx, ok FROM results ORDER BY idx").fetchall()
    assert rows == [(0, 1), (1, 1), (2, 1)]


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


def test_rows_copied_from_a_job_store_batch_equal_what_a_local_run_records(
    tmp_path: Path,
) -> None:
    """The celery backend's copy (columns of a committed batch) stores exactly the rows a
    local backend stores for the same results: successes, a failure, stages, memory."""
    from curator_worker.batch import IndexResult, error_record
    from curator_worker.metrics import metric_rows_of_columns, record_of
    from curator_worker.store.batch_results import decode_metric_columns, encode

    names = {"source": "source", "filter[0]:OffsetFilter": "offset", "sink": "sink"}
    results = [
        IndexResult(4, paths=["/o/4"], seconds=0.002),
        IndexResult(5, paths=["/o/5", "/o/5b"], seconds=0.003,
                    stages={"source": 0.001, "filter[0]:OffsetFilter": 0.0005, "sink": 0.0015},
                    peak_mb=1.5),
        IndexResult(6, error=error_record(ValueError("bad row"))),
        IndexResult(7, paths=[], seconds=0.004, tries=2),
    ]
    local, copied = MetricsStore(tmp_path / "local.db"), MetricsStore(tmp_path / "copy.db")
    local.record("inv", [record_of(r, names) for r in results])
    copied.record_rows("inv", metric_rows_of_columns(
        *decode_metric_columns(encode(results).blob), names))

    def rows(store: MetricsStore) -> list[tuple]:
        with sqlite3.connect(store.path) as conn:
            return conn.execute("SELECT invocation, idx, ok, paths, error, wall_time_ns, "
                                "peak_memory_bytes, stages FROM results ORDER BY idx").fetchall()

    assert rows(copied) == rows(local)
    assert [r[2] for r in rows(copied)] == [1, 1, 0, 1]
    assert json.loads(rows(copied)[1][7]) == [["source", 1_000_000], ["offset", 500_000],
                                              ["sink", 1_500_000]]
