"""Fixtures of the chaos suite: a private cluster per test, and the figures report.

Each test gets its own Redis (AOF on) and starts its own worker nodes through
:class:`~tests.chaos.harness.ChaosCluster`, so it can kill them freely; the session
fixtures' workers of ``tests/conftest.py`` are never touched. Everything is stopped by pid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import VISIBILITY_TIMEOUT, ChaosCluster

#: One line of figures per scenario, repeated at the end of the run.
_FIGURES: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's marker."""
    config.addinivalue_line(
        "markers", "visibility_timeout(seconds): CURATOR_VISIBILITY_TIMEOUT of the chaos "
        f"cluster's workers (default {VISIBILITY_TIMEOUT})")
    config.addinivalue_line(
        "markers", "slow: a chaos scenario that takes a minute or more (deselect with "
        "-m 'not slow')")


@pytest.fixture()
def chaos(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ChaosCluster]:
    """A private Redis (append-only, fixed port) with no worker node yet."""
    marker = request.node.get_closest_marker("visibility_timeout")
    timeout = int(marker.args[0]) if marker else VISIBILITY_TIMEOUT
    cluster = ChaosCluster(tmp_path / "cluster", visibility_timeout=timeout).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def out_dir(tmp_path: Path) -> Path:
    """The job's output folder (nothing else is written there)."""
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture()
def chaos_report(
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> Callable[..., None]:
    """``report(**figures)``: record the figures and print them as one line.

    The figures go to the JUnit XML (``record_property``), to the terminal at once (through
    ``capsys.disabled()``, so they show in ``make test`` output without ``-s``) and to the
    "chaos figures" section at the end of the run.
    """

    def report(**figures: Any) -> None:
        for name, value in figures.items():
            record_property(name, value)
        text = ", ".join(f"{name}={value}" for name, value in figures.items())
        line = f"[chaos] {request.node.name}: {text}"
        _FIGURES.append(line)
        with capsys.disabled():
            print(f"\n{line}", flush=True)

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Repeat every scenario's figures in one section at the end of the run."""
    if _FIGURES:
        terminalreporter.section("chaos figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
