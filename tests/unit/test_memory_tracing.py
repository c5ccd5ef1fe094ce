"""tracemalloc is never stopped where stopping can crash the process (CPython gh-128679)."""

from __future__ import annotations

import tracemalloc

import pytest

from curator_worker import memory_tracing


@pytest.mark.parametrize("safe", [True, False])
def test_tracing_we_started_is_stopped_only_where_that_is_safe(
    monkeypatch: pytest.MonkeyPatch, safe: bool,
) -> None:
    was_on = tracemalloc.is_tracing()
    if was_on:
        tracemalloc.stop()  # a clean start for this test (single-threaded here)
    try:
        monkeypatch.setattr(memory_tracing, "STOP_IS_SAFE", safe)
        started = memory_tracing.start_tracing()
        assert started and tracemalloc.is_tracing()
        assert memory_tracing.start_tracing() is False, "already on: not started again"
        memory_tracing.stop_tracing(started)
        assert tracemalloc.is_tracing() is (not safe)
    finally:
        if tracemalloc.is_tracing() and not was_on:
            tracemalloc.stop()
        if was_on and not tracemalloc.is_tracing():
            tracemalloc.start()


def test_this_interpreter_is_judged_by_its_version() -> None:
    import sys

    fixed = sys.version_info >= (3, 13, 2) or (3, 12, 9) <= sys.version_info < (3, 13)
    assert memory_tracing.STOP_IS_SAFE is fixed
