"""A physicsnemo-curator script runs unchanged on the celery backend's embedded cluster.

No broker is configured, so ``run_pipeline(..., backend="celery")`` starts a private
local cluster. The pipeline's metrics come back through ``pipeline.metrics`` (copied from
the job store) and ``resume=True`` skips what an earlier run completed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from curator_worker import Pipeline, run_pipeline
from curator_worker.config import Settings
from tests.support.compat_components import CsvSink, OffsetFilter, RowStatsFilter, SquaresSource


def pipeline_in(out: Path, n: int = 6) -> Pipeline:
    return Pipeline(
        source=SquaresSource(n=n, scale=0.5),
        filters=[OffsetFilter(offset=1.25), RowStatsFilter(output=str(out / "rows.csv"))],
        sink=CsvSink(output_dir=str(out / "samples")),
        track_metrics=True,
        db_dir=out / ".db",
    )


def sample(out: Path, i: int) -> str:
    return str(out / "samples" / f"sample_{i:04d}.csv")


@pytest.mark.usefixtures("clean_env")
def test_physicsnemo_script_with_metrics_on_the_embedded_cluster(tmp_path: Path) -> None:
    pipeline = pipeline_in(tmp_path)
    results = run_pipeline(pipeline, backend="celery", n_jobs=2)
    assert results == [[sample(tmp_path, i)] for i in range(6)]
    metrics = pipeline.metrics
    assert [m.index for m in metrics.indices] == list(range(6))
    assert all(m.wall_time_ns > 0 and m.peak_memory_bytes > 0 for m in metrics.indices)
    timed = [m for m in metrics.indices if m.stages]  # the job store times a sample of fast
    assert timed  # indices (every batch's first)
    for m in timed:
        assert [s.name for s in m.stages] == [
            "source", OffsetFilter.name, RowStatsFilter.name, "sink"]
    rows = (tmp_path / "rows.csv").read_text().splitlines()
    assert len(rows) == 7  # header + each index once, merged from the batches' shards

    # resume: a new run of the same pipeline sends only what is not done yet
    for i in (0, 1, 2):
        Path(sample(tmp_path, i)).unlink()
    done_before = {m.index for m in metrics.indices}
    again = pipeline_in(tmp_path, n=6)
    assert run_pipeline(again, backend="celery", n_jobs=2, resume=True) == results
    assert not Path(sample(tmp_path, 0)).exists()  # not run again
    assert {m.index for m in again.metrics.indices} == done_before


@pytest.mark.usefixtures("clean_env")
def test_resume_on_celery_runs_only_the_rest(tmp_path: Path) -> None:
    run_pipeline(pipeline_in(tmp_path), backend="sequential", indices=[0, 2, 4])
    for i in (0, 2, 4):
        Path(sample(tmp_path, i)).unlink()
    again = pipeline_in(tmp_path)
    results = run_pipeline(again, backend="celery", n_jobs=1, resume=True)
    assert results == [[sample(tmp_path, i)] for i in range(6)]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        f"sample_{i:04d}.csv" for i in (1, 3, 5)]
    assert [m.index for m in again.metrics.indices] == list(range(6))


@pytest.mark.usefixtures("worker_nodes")
def test_resume_on_a_cluster_counts_earlier_jobs_of_the_same_spec(
    tmp_path: Path, cluster_settings: Settings
) -> None:
    """The earlier run recorded nothing locally (metrics off, as if its client had died):
    resume finds its committed indices in the cluster's job store."""
    where = {"broker_url": cluster_settings.broker_url, "queue": cluster_settings.queue}
    first = pipeline_in(tmp_path)
    first.track_metrics = False
    run_pipeline(first, backend="celery", n_jobs=2, indices=[1, 3], **where)
    for i in (1, 3):
        Path(sample(tmp_path, i)).unlink()
    other = pipeline_in(tmp_path / "elsewhere")  # another spec: its jobs do not count
    run_pipeline(other, backend="celery", n_jobs=2, indices=[0], **where)
    again = pipeline_in(tmp_path)
    results = run_pipeline(again, backend="celery", n_jobs=2, resume=True, **where)
    assert results == [[sample(tmp_path, i)] for i in range(6)]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        f"sample_{i:04d}.csv" for i in (0, 2, 4, 5)]


def test_the_metrics_copy_streams_batches_and_a_retry_rounds_success_wins(
    tmp_path: Path, redis_server, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Copied a few batches per transaction (a million would not fit at once); an index failed in
    the first round and retried keeps the retry's success."""
    from curator_worker import metrics_store
    from curator_worker.backends import celery as celery_backend
    from curator_worker.outcome import IndexResult, error_record
    from curator_worker.store import JobStore
    from curator_worker.store.batch_results import encode

    monkeypatch.setattr(metrics_store, "BLOBS_PER_TRANSACTION", 1)
    store = JobStore.from_url(redis_server.url)
    job = "metrics-copy-stream"
    batches = [("b000000", [0, 1]), ("b000001", [2, 3, 4])]
    store.create_job(job, {"version": 1}, {}, batches, total=5, queue="q")

    def ok(i: int) -> IndexResult:
        return IndexResult(i, paths=[f"/out/{i}"], seconds=0.002)

    failed = IndexResult(1, error=error_record(RuntimeError("first round")))
    store.commit_batch(job, "b000000", encode([ok(0), failed]), {"shards": {}})
    store.commit_batch(job, "b000001", encode([ok(2), ok(3), ok(4)]), {"shards": {}})
    store.add_batches(job, [("r1-b000000", [1])])
    store.commit_batch(job, "r1-b000000", encode([ok(1)]), {"shards": {}})

    pipeline = pipeline_in(tmp_path)
    celery_backend.record_job_metrics(pipeline, store, job)
    assert [m.index for m in pipeline.metrics.indices] == [0, 1, 2, 3, 4]
    assert all(m.wall_time_ns == 2_000_000 for m in pipeline.metrics.indices)
