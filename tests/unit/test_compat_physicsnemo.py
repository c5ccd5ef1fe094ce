"""physicsnemo-curator compatibility: its users' components and saved specs run unchanged.

The components (tests/support/compat_components.py) are written the way physicsnemo-curator
documents them, including a stateful filter whose ``flush`` appends to a ``pathlib.Path``
``_output_path``. They run through every local backend with identical outputs, through the
physicsnemo workflow ``run_pipeline(...)`` then ``gather_pipeline(pipeline)``, and from a
saved YAML spec with its ``metadata`` block.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from curator_worker import Pipeline, gather_pipeline, run_pipeline
from curator_worker.contract.spec import build_pipeline
from tests.support.backends_dask import shared_client
from tests.support.compat_components import CsvSink, OffsetFilter, RowStatsFilter, SquaresSource

SPEC = Path(__file__).resolve().parents[1] / "support" / "compat_pipeline.yaml"
PARALLEL = ["thread", "process_pool", "loky", "dask"]


def compat_pipeline(out: Path, n: int = 10) -> Pipeline:
    """The physicsnemo-style pipeline, writing under ``out``."""
    return (
        SquaresSource(n=n, scale=0.5)
        .filter(OffsetFilter(offset=1.25))
        .filter(RowStatsFilter(output=str(out / "stats" / "rows.csv")))
        .write(CsvSink(output_dir=str(out / "samples")))
    )


def snapshot(results: list[list[str]], root: Path) -> tuple[list[list[str]], dict[str, bytes]]:
    """Results relative to ``root`` and the bytes of every file under it."""
    relative = [[os.path.relpath(p, root) for p in paths] for paths in results]
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file()}
    return relative, files


def options(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"client": shared_client(request.config)} if backend == "dask" else {}


@pytest.mark.parametrize("backend", PARALLEL)
def test_every_backend_gives_sequential_outputs(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    expected = run_pipeline(compat_pipeline(tmp_path / "seq"), backend="sequential")
    result = run_pipeline(compat_pipeline(tmp_path / "par"), backend=backend, n_jobs=2,
                          batch_size=3, **options(backend, request))
    seq_results, seq_files = snapshot(expected, tmp_path / "seq")
    par_results, par_files = snapshot(result, tmp_path / "par")
    assert par_results == seq_results
    assert par_files == seq_files  # sink outputs and the merged stats, byte for byte
    assert "stats/rows.csv" in par_files and len(seq_results) == 10
    rows = par_files["stats/rows.csv"].decode().splitlines()
    assert rows[0] == "index,count,sum,max" and len(rows) == 11  # each index exactly once


def test_physicsnemo_workflow_run_then_gather_pipeline(tmp_path: Path) -> None:
    run_pipeline(compat_pipeline(tmp_path / "seq"), backend="sequential")
    pipeline = compat_pipeline(tmp_path / "par")
    run_pipeline(pipeline, n_jobs=2, backend="process_pool", gather=False, batch_size=4)
    stats = tmp_path / "par" / "stats" / "rows.csv"
    assert not stats.exists()
    assert gather_pipeline(pipeline) == [str(stats)]
    assert stats.read_bytes() == (tmp_path / "seq" / "stats" / "rows.csv").read_bytes()
    assert [p.name for p in stats.parent.iterdir()] == ["rows.csv"]  # shards removed
    assert gather_pipeline(pipeline) == []  # nothing left to merge


def test_component_metadata_matches_physicsnemo_conventions() -> None:
    assert SquaresSource.name == "Synthetic Squares"
    assert [p.name for p in SquaresSource.params()] == ["n", "scale"]
    assert RowStatsFilter.params()[0].required
    stateful = RowStatsFilter(output="x.csv")
    assert isinstance(stateful._output_path, Path)
    assert callable(stateful.flush) and callable(RowStatsFilter.merge)


def test_saved_spec_with_metadata_loads_and_runs_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = yaml.safe_load(SPEC.read_text())
    assert raw["version"] == 1 and "created_utc" in raw["metadata"]
    results = {}
    for backend in ("sequential", "process_pool", "thread"):
        folder = tmp_path / backend
        folder.mkdir()
        monkeypatch.chdir(folder)  # the spec's output paths are relative
        pipeline = Pipeline.load(SPEC)
        assert len(pipeline) == 9  # n: '9' coerced by Param.type
        result = run_pipeline(pipeline, backend=backend, n_jobs=2)
        results[backend] = snapshot(result, folder)
    assert results["sequential"][0][0] == ["compat-out/samples/sample_0000.csv"]
    assert results["process_pool"] == results["sequential"]
    assert results["thread"] == results["sequential"]
    first = results["sequential"][1]["compat-out/samples/sample_0001.csv"]
    assert first.decode().split(",")[0] == repr(1.25)  # 0 * 0.5 + offset


def test_pipeline_saved_here_loads_back(tmp_path: Path) -> None:
    pipeline = compat_pipeline(tmp_path / "a", n=4)
    pipeline.save(tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert saved["source"]["name"] == "Synthetic Squares"
    assert "metadata" in saved
    loaded = Pipeline.load(tmp_path / "saved.yaml")
    assert run_pipeline(loaded) == run_pipeline(pipeline)


def test_physicsnemo_save_pipeline_layout_with_class_keys(tmp_path: Path) -> None:
    module = "tests.support.compat_components"

    def entry(cls: type, params: dict[str, Any]) -> dict[str, Any]:
        return {"class": cls.__name__, "module": module, "name": cls.name,
                "description": cls.description, "params": params}

    spec = {
        "source": entry(SquaresSource, {"n": "3", "scale": "1.0"}),
        "filters": [entry(OffsetFilter, {"offset": 0.0})],
        "sink": entry(CsvSink, {"output_dir": str(tmp_path / "out")}),
        "version": 1,
    }
    assert len(run_pipeline(build_pipeline(spec, "saved.yaml"))) == 3


def physicsnemo_script(out: Path, backend: str, **options: Any) -> Pipeline:
    """What a physicsnemo-curator user writes: the dataclass constructor, metrics on."""
    pipeline = Pipeline(
        source=SquaresSource(n=6, scale=0.5),
        filters=[OffsetFilter(offset=1.25), RowStatsFilter(output=str(out / "rows.csv"))],
        sink=CsvSink(output_dir=str(out / "samples")),
        track_metrics=True,
        db_dir=out / ".db",
    )
    results = run_pipeline(pipeline, backend=backend, n_jobs=2, **options)
    assert results == [[str(out / "samples" / f"sample_{i:04d}.csv")] for i in range(6)]
    return pipeline


def test_physicsnemo_style_script_on_the_process_pool(tmp_path: Path) -> None:
    pipeline = physicsnemo_script(tmp_path / "pp", "process_pool")
    metrics = pipeline.metrics
    assert [m.index for m in metrics.indices] == list(range(6))
    for m in metrics.indices:
        assert [s.name for s in m.stages] == [
            "source", OffsetFilter.name, RowStatsFilter.name, "sink"]
    assert metrics.total_wall_time_ns > 0 and metrics.total_peak_memory_bytes > 0
    # the stateful filter's merged output equals a sequential run's flush
    physicsnemo_script(tmp_path / "seq", "sequential")
    assert (tmp_path / "pp" / "rows.csv").read_bytes() == (
        tmp_path / "seq" / "rows.csv").read_bytes()


def test_a_loaded_spec_records_metrics_by_default(tmp_path: Path) -> None:
    pipeline = compat_pipeline(tmp_path / "a", n=3)
    pipeline.save(tmp_path / "saved.yaml")
    loaded = Pipeline.load(tmp_path / "saved.yaml")
    assert loaded.track_metrics is True
    loaded.db_dir = tmp_path / "db"
    run_pipeline(loaded)
    assert [m.index for m in loaded.metrics.indices] == [0, 1, 2]
    assert loaded.db_path.name == pipeline.db_path.name  # the same configuration
