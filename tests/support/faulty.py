"""Sources that misbehave on purpose, importable by worker subprocesses.

Each wraps :class:`SyntheticArrays` so outputs and statistics stay comparable with a clean
sequential run of the same seed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curator_worker import Param
from curator_worker.components import SyntheticArrays


def _index_set(text: str) -> set[int]:
    return {int(part) for part in text.split(",") if part.strip()}


class FlakyArrays(SyntheticArrays):
    """Indices in ``flaky`` raise ``OSError`` on their first ``fail_times`` reads.

    Reads are counted in files under ``state_dir`` so every worker process sees them.
    """

    name = "FlakyArrays"
    description = "SyntheticArrays whose flaky indices fail transiently"

    @classmethod
    def params(cls) -> list[Param]:
        return [*super().params(),
                Param("flaky", "Comma-separated flaky indices", default=""),
                Param("fail_times", "Failing reads per flaky index", type=int, default=1),
                Param("state_dir", "Folder counting reads", default="")]

    def __init__(self, flaky: str = "", fail_times: int = 1, state_dir: str = "",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flaky = _index_set(flaky)
        self.fail_times = fail_times
        self.state_dir = Path(state_dir)

    def __getitem__(self, index: int) -> Iterator[dict[str, Any]]:
        if index in self.flaky:
            marker = self.state_dir / f"reads-{index}"
            with open(marker, "a") as f:
                f.write("x")
            if marker.stat().st_size <= self.fail_times:
                raise OSError(f"transient read error at index {index}")
        return super().__getitem__(index)


class HangingArrays(SyntheticArrays):
    """Indices in ``hang`` sleep ``hang_s`` seconds (or until the file ``release`` exists,
    when given); ``hog`` indices allocate ``hog_mb`` MiB."""

    name = "HangingArrays"
    description = "SyntheticArrays with hung and memory-hungry indices"

    @classmethod
    def params(cls) -> list[Param]:
        return [*super().params(),
                Param("hang", "Comma-separated hung indices", default=""),
                Param("hang_s", "Seconds a hung index sleeps", type=float, default=3600.0),
                Param("release", "File whose existence ends a hang early", default=""),
                Param("hog", "Comma-separated memory-hog indices", default=""),
                Param("hog_mb", "MiB a hog allocates", type=int, default=4096)]

    def __init__(self, hang: str = "", hang_s: float = 3600.0, release: str = "",
                 hog: str = "", hog_mb: int = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hang, self.hang_s, self.release = _index_set(hang), hang_s, release
        self.hog, self.hog_mb = _index_set(hog), hog_mb

    def __getitem__(self, index: int) -> Iterator[dict[str, Any]]:
        if index in self.hang:
            if self.release:
                deadline = time.monotonic() + self.hang_s
                while time.monotonic() < deadline and not os.path.exists(self.release):
                    time.sleep(0.05)
            else:
                time.sleep(self.hang_s)
        if index in self.hog:
            blob = bytearray(self.hog_mb * 1024 * 1024)
            del blob
        return super().__getitem__(index)


class CrashingArrays(SyntheticArrays):
    """Indices in ``crash`` kill their worker process (``os._exit``), like a segfault."""

    name = "CrashingArrays"
    description = "SyntheticArrays whose crash indices kill the process"

    @classmethod
    def params(cls) -> list[Param]:
        return [*super().params(), Param("crash", "Comma-separated crashing indices", default="")]

    def __init__(self, crash: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crash = _index_set(crash)

    def __getitem__(self, index: int) -> Iterator[dict[str, Any]]:
        if index in self.crash:
            os._exit(13)
        return super().__getitem__(index)


class BrokenUntilFixed(SyntheticArrays):
    """Indices in ``broken`` raise ``RuntimeError`` until the file ``fixed_flag`` exists."""

    name = "BrokenUntilFixed"
    description = "SyntheticArrays with indices broken until a flag file appears"

    @classmethod
    def params(cls) -> list[Param]:
        return [*super().params(),
                Param("broken", "Comma-separated broken indices", default=""),
                Param("fixed_flag", "File whose existence fixes them", default="")]

    def __init__(self, broken: str = "", fixed_flag: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.broken = _index_set(broken)
        self.fixed_flag = fixed_flag

    def __getitem__(self, index: int) -> Iterator[dict[str, Any]]:
        if index in self.broken and not os.path.exists(self.fixed_flag):
            raise RuntimeError(f"index {index} is broken until {self.fixed_flag} exists")
        return super().__getitem__(index)
