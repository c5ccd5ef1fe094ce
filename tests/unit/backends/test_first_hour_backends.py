"""What a new user meets first on the local backends (issue 18, point 5): a failing index
named in the error, unknown options refused, ``on_error="collect"`` everywhere, and one
clear message for a script without a ``__main__`` guard on ``process_pool``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from curator_worker import run_pipeline
from curator_worker.backends.run_result import RunResult
from curator_worker.components import FieldStats, NpzPerIndex, SyntheticArrays
from curator_worker.contract.pipeline import Pipeline
from curator_worker.errors import CuratorError, IndexFailedError
from tests.support.cluster import REPO


def pipeline(out: Path, count: int = 6, fail_indices: str = "") -> Pipeline:
    return (SyntheticArrays(count=count, seed=3, size=4, fail_indices=fail_indices)
            .filter(FieldStats(output=str(out / "stats.json")))
            .write(NpzPerIndex(output_dir=str(out / "arrays"))))


def test_sequential_names_the_failing_index_and_chains_the_original(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as info:  # still the original's type (physicsnemo)
        run_pipeline(pipeline(tmp_path, fail_indices="4"), backend="sequential",
                     progress=False)
    error = info.value
    assert isinstance(error, IndexFailedError) and isinstance(error, CuratorError)
    assert str(error) == "index 4 failed: synthetic failure at index 4"
    assert error.index == 4
    assert type(error.__cause__) is RuntimeError
    assert str(error.__cause__) == "synthetic failure at index 4"


def test_an_exception_type_that_cannot_be_combined_keeps_a_note(tmp_path: Path) -> None:
    class Picky(Exception):
        def __init__(self, code: int, where: str) -> None:
            super().__init__(f"code {code} at {where}")

    class Bad(SyntheticArrays):
        def __getitem__(self, index: int):  # type: ignore[override]
            if index == 2:
                raise Picky(7, "disk")
            return super().__getitem__(index)

    p = Bad(count=3, size=2).write(NpzPerIndex(output_dir=str(tmp_path)))
    with pytest.raises(Picky) as info:
        run_pipeline(p, backend="sequential", progress=False)
    assert "raised by index 2 on the sequential backend" in "".join(info.value.__notes__)


@pytest.mark.parametrize("backend", ["sequential", "thread", "process_pool"])
def test_unknown_backend_options_are_refused_in_one_line(tmp_path: Path, backend: str) -> None:
    with pytest.raises(TypeError) as info:
        run_pipeline(pipeline(tmp_path), backend=backend, n_jobs=1, bogus_option=1,
                     progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"Unknown {backend} backend option(s): bogus_option." in message
    assert "on_error" in message, "the message lists the known options"
    assert not (tmp_path / "arrays").exists(), "refused before anything ran"


@pytest.mark.parametrize("backend", ["sequential", "thread", "process_pool"])
def test_on_error_collect_returns_the_failures_on_every_local_backend(
        tmp_path: Path, backend: str) -> None:
    result = run_pipeline(pipeline(tmp_path, fail_indices="1,4"), backend=backend, n_jobs=2,
                          on_error="collect", progress=False)
    assert isinstance(result, RunResult)
    assert result[1] == [] and result[4] == [] and len(result[0]) == 1
    assert result.failures == {1: "RuntimeError: synthetic failure at index 1",
                               4: "RuntimeError: synthetic failure at index 4"}
    assert "Traceback" in result.errors[1]["traceback"]
    # the failed indices contribute nothing to the stateful filter
    clean = tmp_path / "clean"
    run_pipeline(pipeline(clean), backend="sequential", indices=[0, 2, 3, 5], progress=False)
    assert (tmp_path / "stats.json").read_bytes() == (clean / "stats.json").read_bytes()


def test_sequential_rejects_a_bad_on_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'collect'"):
        run_pipeline(pipeline(tmp_path), backend="sequential", on_error="ignore")


def test_a_script_without_main_guard_gets_one_clear_message(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""\
        from curator_worker import run_pipeline
        from curator_worker.components import NpzPerIndex, SyntheticArrays
        p = SyntheticArrays(count=4, size=2).write(NpzPerIndex(output_dir={str(tmp_path)!r}))
        run_pipeline(p, backend="process_pool", n_jobs=2, progress=False)
        """))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1
    assert "RuntimeError" not in done.stderr, done.stderr
    assert done.stderr.count("no `if __name__ == '__main__':` guard") == 1, done.stderr
    assert done.stderr.count("Traceback") == 1, "the script's own error, once"


def test_an_empty_source_says_so(tmp_path: Path) -> None:
    from curator_worker.errors import IndexSelectionError

    with pytest.raises(IndexSelectionError) as info:
        run_pipeline(pipeline(tmp_path, count=0), backend="thread", n_jobs=2)
    assert "source is empty (0 items)" in str(info.value)
    assert "Give at least one index" not in str(info.value)


def test_progress_lines_show_rates_for_people() -> None:
    import io
    import time

    from curator_worker.progress import ProgressReporter

    out = io.StringIO()
    with ProgressReporter(400_000, "log", label="run", stream=out,
                          started=time.time() - 2) as bar:
        bar.update(300_000, force=True)
    line = out.getvalue().strip()
    assert line.startswith("run: 300000/400000 (300000 done, 0 failed) ")
    rate = line.split(") ")[1].split(" ")[0]
    assert rate.endswith("k/s") and 100 < float(rate[:-3]) <= 150, line
