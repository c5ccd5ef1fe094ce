"""The local backends (thread, process_pool, loky, dask) against the sequential one.

Every backend must give the same ordered results and the same merged stateful outputs as
``sequential``, honour partitions, leave unique shards for ``gather_pipeline`` when asked,
and report failed indices at the end. ``process_pool`` also survives timeouts and crashed
workers. Dask runs on one cluster shared by the session (see tests/support/backends_dask.py)
except for the test of the backend's own cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from curator_worker import gather_pipeline, run_pipeline
from curator_worker.backends.local import LocalRun
from curator_worker.backends.process_pool import ProcessPoolBackend
from curator_worker.backends.run_result import RunResult, failure_record
from curator_worker.backends.thread import ThreadBackend
from curator_worker.components import FieldStats, NpzPerIndex, SyntheticArrays
from curator_worker.contract.pipeline import Filter, Pipeline
from curator_worker.errors import JobFailedError, SpecError
from curator_worker.run import list_backends
from tests.support import backends_fixtures as fx
from tests.support.backends_dask import shared_client

LOCAL = ["thread", "process_pool", "loky", "dask"]
PROCESS = ["process_pool", "loky", "dask"]


@pytest.fixture()
def opts(request: pytest.FixtureRequest, backend: str) -> dict[str, Any]:
    """Backend options every run of ``backend`` needs (dask: the session's cluster)."""
    if backend == "dask":
        return {"client": shared_client(request.config)}
    return {}


def stats_pipeline(out: Path, count: int = 12, **source: Any) -> Pipeline:
    """Synthetic arrays -> FieldStats (stateful, exact under any batching) -> one npz each."""
    return (
        SyntheticArrays(count=count, seed=3, size=8, **source)
        .filter(FieldStats(output=str(out / "stats.json")))
        .write(NpzPerIndex(output_dir=str(out / "arrays")))
    )


def sum_pipeline(out: Path, n: int = 10, group: int = 0, **source: Any) -> Pipeline:
    """Numbers -> RunningSum (stateful, appends in flush) -> one text file each."""
    return Pipeline(
        fx.Numbers(n, **source), [fx.RunningSum(str(out / "sum.json"))],
        fx.TextSink(str(out / "txt"), group=group),
    )


def relative(results: list[list[str]], root: Path) -> list[list[str]]:
    return [[os.path.relpath(p, root) for p in paths] for paths in results]


def no_shards_left(root: Path) -> bool:
    return not any(p.name.endswith(".shards") for p in root.rglob("*"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- same results


@pytest.mark.parametrize("backend", LOCAL)
def test_results_and_merged_state_match_sequential(
    tmp_path: Path, backend: str, opts: dict[str, Any]
) -> None:
    indices = [7, 2, 9, 0, 11, 4, 5]
    expected = run_pipeline(stats_pipeline(tmp_path / "seq"), indices=indices)
    result = run_pipeline(
        stats_pipeline(tmp_path / "par"), backend=backend, n_jobs=2, indices=indices,
        batch_size=2, **opts,
    )
    assert isinstance(result, RunResult) and result.failures == {} and result.ok
    assert relative(result, tmp_path / "par") == relative(expected, tmp_path / "seq")
    assert relative(result, tmp_path / "par")[0] == ["arrays/item_00000007.npz"]
    assert all(os.path.exists(p) for paths in result for p in paths)
    seq_stats = (tmp_path / "seq" / "stats.json").read_bytes()
    assert (tmp_path / "par" / "stats.json").read_bytes() == seq_stats
    assert read_json(tmp_path / "par" / "stats.json")["items"] == len(indices)
    assert no_shards_left(tmp_path)


@pytest.mark.parametrize("backend", LOCAL)
def test_stateful_filter_that_appends_counts_each_item_once(
    tmp_path: Path, backend: str, opts: dict[str, Any]
) -> None:
    # Runs twice into the same output: a flush that appends must never see an old file.
    pipeline = sum_pipeline(tmp_path, n=9)
    for _ in range(2):
        result = run_pipeline(pipeline, backend=backend, n_jobs=2, batch_size=2, **opts)
        merged = read_json(tmp_path / "sum.json")
        assert merged == {"count": 9, "total": 36, "seen": list(range(9))}
    assert result == [[str(tmp_path / "txt" / f"{i:04d}.txt")] for i in range(9)]
    assert no_shards_left(tmp_path)


# --------------------------------------------------------------------------- partitions + gather


@pytest.mark.parametrize("backend", LOCAL)
def test_partitions_are_never_split_and_gather_false_leaves_shards(
    tmp_path: Path, backend: str, opts: dict[str, Any]
) -> None:
    pipeline = sum_pipeline(tmp_path, n=10, group=3)
    result = run_pipeline(pipeline, backend=backend, n_jobs=2, batch_size=1, gather=False,
                          indices=[9, 4, 3, 0, 1, 2, 5, 6, 7, 8], on_error="collect", **opts)
    assert not (tmp_path / "sum.json").exists()
    run_folder = tmp_path / "sum.json.shards" / result.run_id
    shards = sorted(run_folder.glob("*.shard"))
    # batch_size=1 still keeps each sink partition (i // 3) whole, in order, in one batch.
    batches = sorted(read_json(s)["seen"] for s in shards)
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    host = socket.gethostname()
    assert all(host in s.name for s in shards)
    assert len({s.name.split(".", 1)[1] for s in shards}) == len(shards)  # unique beyond key

    assert gather_pipeline(pipeline) == [str(tmp_path / "sum.json")]
    merged = read_json(tmp_path / "sum.json")
    assert merged["count"] == 10 and sorted(merged["seen"]) == list(range(10))
    assert no_shards_left(tmp_path)
    assert result == [[str(tmp_path / "txt" / f"{i:04d}.txt")] for i in
                      [9, 4, 3, 0, 1, 2, 5, 6, 7, 8]]


@pytest.mark.parametrize("backend", ["thread", "process_pool"])
def test_gather_false_then_gather_pipeline_equals_sequential(tmp_path: Path, backend: str) -> None:
    run_pipeline(stats_pipeline(tmp_path / "seq"))
    pipeline = stats_pipeline(tmp_path / "par")
    first = run_pipeline(pipeline, backend=backend, n_jobs=2, gather=False, batch_size=3)
    assert not (tmp_path / "par" / "stats.json").exists()
    shards = list((tmp_path / "par" / "stats.json.shards" / first.run_id).glob("*.shard"))
    assert len(shards) == 4
    assert gather_pipeline(pipeline) == [str(tmp_path / "par" / "stats.json")]
    assert (tmp_path / "par" / "stats.json").read_bytes() == (
        tmp_path / "seq" / "stats.json").read_bytes()
    assert no_shards_left(tmp_path)


def test_gather_false_leaves_only_committed_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A unit whose report is lost (its worker died after writing the shard) has its indices
    # failed; its shard must not reach gather_pipeline, or they would count after all.
    original = LocalRun.commit
    lost: list[int] = []

    def lossy_commit(self: LocalRun, unit: Any, report: Any) -> None:
        if not lost:
            lost.extend(unit.indices)
            for index in unit.indices:
                self.fail(index, failure_record("crash", "Lost", "the report was lost"))
            return
        original(self, unit, report)

    monkeypatch.setattr(LocalRun, "commit", lossy_commit)
    pipeline = sum_pipeline(tmp_path, n=6)
    result = run_pipeline(pipeline, backend="thread", n_jobs=2, batch_size=2, gather=False,
                          on_error="collect")
    assert sorted(result.failures) == sorted(lost) and len(lost) == 2
    assert len(list((tmp_path / "sum.json.shards" / result.run_id).iterdir())) == 2
    gather_pipeline(pipeline)
    merged = read_json(tmp_path / "sum.json")
    assert sorted(merged["seen"]) == [i for i in range(6) if i not in lost]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("backend", LOCAL)
def test_failed_indices_raise_at_end_after_merging_the_rest(
    tmp_path: Path, backend: str, opts: dict[str, Any]
) -> None:
    run_pipeline(stats_pipeline(tmp_path / "seq"), indices=[0, 1, 3, 4, 6, 7])
    pipeline = stats_pipeline(tmp_path / "par", count=8, fail_indices="2,5")
    with pytest.raises(JobFailedError) as info:
        run_pipeline(pipeline, backend=backend, n_jobs=2, batch_size=3, **opts)
    error = info.value
    assert error.state == "partial"
    assert error.job_id.startswith(f"{backend}-")
    assert error.failures == {
        2: "RuntimeError: synthetic failure at index 2",
        5: "RuntimeError: synthetic failure at index 5",
    }
    assert "2 failed indices" in str(error)
    assert "curator-jobs" not in str(error), "a local run is not in the job store"
    # The failed indices contribute nothing; the others are merged before the raise.
    assert (tmp_path / "par" / "stats.json").read_bytes() == (
        tmp_path / "seq" / "stats.json").read_bytes()
    written = sorted(p.name for p in (tmp_path / "par" / "arrays").iterdir())
    assert written == [f"item_{i:08d}.npz" for i in (0, 1, 3, 4, 6, 7)]
    assert no_shards_left(tmp_path)


@pytest.mark.parametrize("backend", LOCAL)
def test_on_error_collect_returns_results_with_failures(
    tmp_path: Path, backend: str, opts: dict[str, Any]
) -> None:
    pipeline = sum_pipeline(tmp_path, n=6, fail_at="1,4")
    result = run_pipeline(pipeline, backend=backend, n_jobs=2, on_error="collect",
                          indices=[4, 0, 1, 5], **opts)
    assert isinstance(result, RunResult) and not result.ok
    assert result == [[], [str(tmp_path / "txt" / "0000.txt")], [],
                      [str(tmp_path / "txt" / "0005.txt")]]
    assert result.failures == {4: "ValueError: bad index 4", 1: "ValueError: bad index 1"}
    assert result.errors[1]["kind"] == "error" and "bad index 1" in result.errors[1]["traceback"]
    assert read_json(tmp_path / "sum.json") == {"count": 2, "total": 5, "seen": [0, 5]}


# --------------------------------------------------------------------------- pickling


@pytest.mark.parametrize("backend", LOCAL)
def test_closures_and_lambdas_work_as_filters(
    tmp_path: Path, backend: str, opts: dict[str, Any]
) -> None:
    factor = 3

    def times(items: Iterator[int]) -> Iterator[int]:
        return (x * factor for x in items)

    pipeline = Pipeline(
        fx.Numbers(5), [times, lambda items: (x + 1 for x in items)],
        fx.TextSink(str(tmp_path)),
    )
    run_pipeline(pipeline, backend=backend, n_jobs=2, **opts)
    firsts = [(tmp_path / f"{i:04d}.txt").read_text().splitlines()[0] for i in range(5)]
    assert firsts == [str(3 * i + 1) for i in range(5)]


def test_celery_refuses_lambdas_and_local_classes(tmp_path: Path) -> None:
    lam = Pipeline(fx.Numbers(3), [lambda items: items], fx.TextSink(str(tmp_path)))
    with pytest.raises(SpecError, match="lambdas run only on local backends"):
        run_pipeline(lam, backend="celery", n_jobs=2)

    class Local(Filter[int]):
        def __call__(self, items: Iterator[int]) -> Iterator[int]:
            return items

    local = Pipeline(fx.Numbers(3), [Local()], fx.TextSink(str(tmp_path)))
    with pytest.raises(SpecError, match="defined in a function"):
        run_pipeline(local, backend="celery", n_jobs=2)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- Path-typed state


@pytest.mark.parametrize("backend", LOCAL)
def test_output_path_keeps_its_pathlib_type(
    tmp_path: Path, backend: str, opts: dict[str, Any]
) -> None:
    pipeline = Pipeline(fx.Numbers(7), [fx.PathStats(str(tmp_path / "rows.txt"))],
                        fx.TextSink(str(tmp_path / "txt")))
    run_pipeline(pipeline, backend=backend, n_jobs=2, batch_size=2, **opts)
    assert (tmp_path / "rows.txt").read_text().split() == [str(i) for i in range(7)]


def test_output_path_keeps_its_pathlib_type_sequential(tmp_path: Path) -> None:
    pipeline = Pipeline(fx.Numbers(3), [fx.PathStats(str(tmp_path / "rows.txt"))],
                        fx.TextSink(str(tmp_path / "txt")))
    run_pipeline(pipeline, backend="sequential")
    assert (tmp_path / "rows.txt").read_text().split() == ["0", "1", "2"]


# --------------------------------------------------------------------------- process_pool


def pool_workers() -> set[int]:
    """Pids of this test process's children started by multiprocessing's spawn."""
    workers = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                workers.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return workers


def runs(log_dir: Path) -> dict[int, int]:
    """How many times each index ran (from Numbers' log)."""
    return {int(p.stem): len(p.read_text().split()) for p in log_dir.glob("*.runs")}


def test_process_pool_timeout_kills_the_worker_and_redoes_its_batch(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    pipeline = sum_pipeline(tmp_path, n=6, hang_at="2", log_dir=str(logs))
    before = pool_workers()
    start = time.monotonic()
    result = run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=3,
                          timeout=1, on_error="collect")
    assert time.monotonic() - start < 20  # the hung index sleeps 60 s
    assert result.failures == {
        2: "TimeoutError: index 2 ran longer than 1 s; its worker process was killed"
    }
    assert result.errors[2]["kind"] == "timeout"
    assert [bool(paths) for paths in result] == [True, True, False, True, True, True]
    # Batch [0, 1, 2] lost its filter state with the killed worker: 0 and 1 ran again in a
    # fresh process; nothing is counted twice and nothing is lost.
    assert runs(logs) == {0: 2, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1}
    merged = read_json(tmp_path / "sum.json")
    assert merged["count"] == 5 and sorted(merged["seen"]) == [0, 1, 3, 4, 5]
    assert no_shards_left(tmp_path)
    assert pool_workers() <= before  # the killed worker and its replacements are gone


@pytest.mark.parametrize(
    ("fault", "how"),
    [("crash_at", "was killed by SIGSEGV"), ("exit_at", "exited with code 3")],
    ids=["segfault", "os._exit"],
)
def test_process_pool_crashed_worker_fails_only_its_index(
    tmp_path: Path, fault: str, how: str
) -> None:
    pipeline = sum_pipeline(tmp_path, n=8, **{fault: "4"})
    with pytest.raises(JobFailedError) as info:
        run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=3)
    assert info.value.state == "partial"
    assert info.value.failures == {
        4: f"WorkerCrashedError: the worker process {how} while running index 4"
    }
    merged = read_json(tmp_path / "sum.json")
    assert merged["count"] == 7 and sorted(merged["seen"]) == [0, 1, 2, 3, 5, 6, 7]
    assert sorted(p.name for p in (tmp_path / "txt").iterdir()) == [
        f"{i:04d}.txt" for i in (0, 1, 2, 3, 5, 6, 7)
    ]


def test_process_pool_crash_without_state_keeps_finished_indices(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    pipeline = Pipeline(fx.Numbers(6, exit_at="1", log_dir=str(logs)), [],
                        fx.TextSink(str(tmp_path / "txt")))
    result = run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=3,
                          on_error="collect")
    assert list(result.failures) == [1] and result.errors[1]["kind"] == "crash"
    assert runs(logs) == {i: 1 for i in range(6)}  # only index 2 was left to re-run
    assert [bool(paths) for paths in result] == [True, False, True, True, True, True]


def pids(folder: Path) -> set[str]:
    return {line for p in folder.glob("*.txt") for line in p.read_text().splitlines()
            if line.startswith("pid=")}


def test_process_pool_max_tasks_per_child_recycles_workers(tmp_path: Path) -> None:
    pipeline = Pipeline(fx.Numbers(4), [], fx.TextSink(str(tmp_path / "recycled")))
    run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=1,
                 max_tasks_per_child=1)
    assert len(pids(tmp_path / "recycled")) == 4
    pipeline = Pipeline(fx.Numbers(4), [], fx.TextSink(str(tmp_path / "kept")))
    run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=1)
    assert len(pids(tmp_path / "kept")) <= 2


def test_process_pool_initializer_runs_in_every_worker(tmp_path: Path) -> None:
    pipeline = Pipeline(fx.Numbers(4), [], fx.TextSink(str(tmp_path)))
    run_pipeline(pipeline, backend="process_pool", n_jobs=2, batch_size=1,
                 initializer=fx.set_tag, initargs=("hello",))
    tags = {(tmp_path / f"{i:04d}.txt").read_text().splitlines()[2] for i in range(4)}
    assert tags == {"tag=hello"}


def test_process_pool_failing_initializer_fails_the_run(tmp_path: Path) -> None:
    pipeline = Pipeline(fx.Numbers(3), [], fx.TextSink(str(tmp_path)))
    with pytest.raises(JobFailedError, match="the initializer broke") as info:
        run_pipeline(pipeline, backend="process_pool", n_jobs=2,
                     initializer=fx.broken_initializer)
    assert info.value.state == "failed"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("how", "message"),
    [("raise", "this source cannot be loaded here"), ("exit", "die before they are ready")],
)
def test_process_pool_workers_that_cannot_start_fail_the_run(
    tmp_path: Path, how: str, message: str
) -> None:
    before = pool_workers()
    pipeline = Pipeline(fx.BreaksInWorkers(3, how=how), [], fx.TextSink(str(tmp_path)))
    with pytest.raises(JobFailedError, match=message) as info:
        run_pipeline(pipeline, backend="process_pool", n_jobs=2)
    assert info.value.state == "failed"
    assert pool_workers() <= before


def test_loky_initializer_runs_in_every_worker(tmp_path: Path) -> None:
    pipeline = Pipeline(fx.Numbers(3), [], fx.TextSink(str(tmp_path)))
    run_pipeline(pipeline, backend="loky", n_jobs=2, initializer=fx.set_tag, initargs=("lk",))
    assert {(tmp_path / f"{i:04d}.txt").read_text().splitlines()[2] for i in range(3)} == {
        "tag=lk"
    }


# --------------------------------------------------------------------------- dask


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_dask_starts_and_closes_its_own_cluster(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    expected = run_pipeline(stats_pipeline(tmp_path / "seq"))
    result = run_pipeline(stats_pipeline(tmp_path / "dask"), backend="dask", n_jobs=2)
    assert relative(result, tmp_path / "dask") == relative(expected, tmp_path / "seq")
    assert (tmp_path / "dask" / "stats.json").read_bytes() == (
        tmp_path / "seq" / "stats.json").read_bytes()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = {p.pid for p in psutil.Process().children(recursive=True)} - before
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"dask processes left running: {left}"


def test_dask_scheduler_address(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    address = shared_client(request.config).scheduler.address
    result = run_pipeline(sum_pipeline(tmp_path, n=4), backend="dask", n_jobs=1,
                          scheduler_address=address)
    assert len(result) == 4
    assert read_json(tmp_path / "sum.json")["count"] == 4
    with pytest.raises(ValueError, match="not both"):
        run_pipeline(sum_pipeline(tmp_path, n=4), backend="dask", n_jobs=2,
                     scheduler_address=address, client=shared_client(request.config))


# --------------------------------------------------------------------------- options, n_jobs


@pytest.mark.parametrize("backend", LOCAL)
def test_unknown_and_bad_options_are_refused(tmp_path: Path, backend: str) -> None:
    pipeline = sum_pipeline(tmp_path, n=2)
    with pytest.raises(TypeError, match="no_such_option"):
        run_pipeline(pipeline, backend=backend, n_jobs=2, no_such_option=1)
    with pytest.raises(ValueError, match="on_error"):
        run_pipeline(pipeline, backend=backend, n_jobs=2, on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        run_pipeline(pipeline, backend=backend, n_jobs=2, batch_size=0)
    assert not (tmp_path / "txt").exists()


@pytest.mark.parametrize(
    "kwargs", [{"timeout": 0}, {"max_tasks_per_child": 0}, {"initializer": 3},
               {"mp_context": "teleport"}],
    ids=["timeout", "max_tasks", "initializer", "mp_context"],
)
def test_process_pool_bad_options(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        run_pipeline(sum_pipeline(tmp_path, n=2), backend="process_pool", n_jobs=2, **kwargs)


def test_n_jobs_one_runs_sequentially_unless_options_are_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = ThreadBackend.execute

    def spy(self: ThreadBackend, run: Any) -> None:
        calls.append(run.config.n_jobs)
        original(self, run)

    monkeypatch.setattr(ThreadBackend, "execute", spy)
    plain = run_pipeline(sum_pipeline(tmp_path, n=3), backend="thread", n_jobs=1)
    assert calls == [] and type(plain) is list
    # Options only the named backend honours keep it, with one worker.
    collected = run_pipeline(sum_pipeline(tmp_path, n=3, fail_at="1"), backend="thread",
                             n_jobs=1, on_error="collect")
    assert calls == [1] and collected.failures == {1: "ValueError: bad index 1"}
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    run_pipeline(sum_pipeline(tmp_path, n=3), backend="thread", n_jobs=-2)
    assert calls == [1, 2]


@pytest.mark.parametrize("backend", ["thread", "process_pool"])
@pytest.mark.parametrize("kwargs", [{"progress": "log"}, {"use_tui": True}],
                         ids=["progress=log", "use_tui"])
def test_progress_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str, kwargs: dict[str, Any]
) -> None:
    run_pipeline(sum_pipeline(tmp_path, n=5, fail_at="3"), backend=backend, n_jobs=2,
                 on_error="collect", **kwargs)
    err = capsys.readouterr().err
    assert f"{backend}: 5/5 (4 done, 1 failed)" in err


def test_no_progress_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_pipeline(sum_pipeline(tmp_path, n=3), backend="thread", n_jobs=2)
    assert "3/3" not in capsys.readouterr().err


# --------------------------------------------------------------------------- registry


def test_every_backend_is_listed() -> None:
    listed = list_backends()
    assert {"sequential", "thread", "thread_pool", "process_pool", "loky", "dask",
            "celery"} <= set(listed)
    for name in ("thread", "process_pool", "loky", "dask"):
        assert listed[name]["available"] is True
    assert listed["dask"]["requires"] == ["dask", "distributed", "cloudpickle"]
    assert ProcessPoolBackend.extra == "local"


@pytest.mark.parametrize(
    ("backend", "package", "extra"),
    [("dask", "distributed", "dask"), ("loky", "joblib", "loky"),
     ("process_pool", "cloudpickle", "local")],
)
def test_missing_optional_dependency_names_package_and_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, package: str, extra: str
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == package else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert list_backends()[backend]["available"] is False
    with pytest.raises(ImportError, match=f"'{package}'") as info:
        run_pipeline(sum_pipeline(tmp_path, n=2), backend=backend, n_jobs=2)
    assert f"pip install 'curator-worker[{extra}]'" in str(info.value)
