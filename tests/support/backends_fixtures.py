"""Components for the backend tests, importable by worker processes (spawn, loky, dask).

Fault injection (``crash_at``, ``exit_at``, ``hang_at``) kills or blocks the process that
runs the index: use it with the ``process_pool`` backend only.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from curator_worker.contract.pipeline import Filter, Param, Sink, Source

#: Set in worker processes by :func:`set_tag` (the ``initializer`` tests).
TAG = "unset"


def set_tag(value: str) -> None:
    """An ``initializer``: remember ``value`` in this worker process."""
    global TAG
    TAG = value


def broken_initializer() -> None:
    """An ``initializer`` that fails."""
    raise RuntimeError("the initializer broke")


def _index_set(text: str) -> frozenset[int]:
    return frozenset(int(part) for part in str(text).split(",") if part.strip())


class Numbers(Source[int]):
    """Index ``i`` yields ``i``; with fault injection and a log of every run of an index.

    Parameters
    ----------
    n : int
        Number of indices.
    fail_at, crash_at, exit_at, hang_at : str
        Comma-separated indices that raise ``ValueError``, die by ``SIGSEGV``, call
        ``os._exit(3)`` or sleep 60 s.
    log_dir : str
        If given, every run of index ``i`` appends ``<pid>`` to ``log_dir/<i>.runs``.
    """

    name = "Numbers"
    description = "0..n-1 with fault injection"

    def __init__(self, n: int, fail_at: str = "", crash_at: str = "", exit_at: str = "",
                 hang_at: str = "", log_dir: str = "") -> None:
        self.n = n
        self.fail_at = _index_set(fail_at)
        self.crash_at = _index_set(crash_at)
        self.exit_at = _index_set(exit_at)
        self.hang_at = _index_set(hang_at)
        self.log_dir = log_dir

    @classmethod
    def params(cls) -> list[Param]:
        """The parameters."""
        return [Param("n", "How many", type=int)] + [
            Param(name, "Comma-separated indices", type=str, default="")
            for name in ("fail_at", "crash_at", "exit_at", "hang_at", "log_dir")
        ]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Iterator[int]:
        if self.log_dir:
            with open(os.path.join(self.log_dir, f"{index}.runs"), "a") as out:
                out.write(f"{os.getpid()}\n")
        if index in self.crash_at:
            os.kill(os.getpid(), signal.SIGSEGV)
        if index in self.exit_at:
            os._exit(3)
        if index in self.hang_at:
            time.sleep(60)
        if index in self.fail_at:
            raise ValueError(f"bad index {index}")
        yield index


class TextSink(Sink[int]):
    """Writes ``<output_dir>/<index>.txt``: the items, the worker's pid and :data:`TAG`.

    With ``group`` > 0, indices ``i`` with the same ``i // group`` form one partition.
    """

    name = "TextSink"
    description = "One text file per index"

    def __init__(self, output_dir: str, group: int = 0) -> None:
        self.output_dir = output_dir
        self.group = group

    def partition_indices(self, indices: Sequence[int]) -> list[list[int]] | None:
        if not self.group:
            return None
        groups: dict[int, list[int]] = {}
        for i in indices:
            groups.setdefault(i // self.group, []).append(i)
        return [sorted(groups[g]) for g in sorted(groups)]

    def __call__(self, items: Iterator[Any], index: int) -> list[str]:
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"{index:04d}.txt")
        values = ",".join(str(x) for x in items)
        with open(path, "w") as out:
            out.write(f"{values}\npid={os.getpid()}\ntag={TAG}\n")
        return [path]


class RunningSum(Filter[int]):
    """Stateful: count, total and the items seen; ``flush`` APPENDS one JSON line.

    ``merge`` adds the lines of every shard up, keeping the items in shard order, so a
    double-counted or lost item shows.
    """

    name = "RunningSum"
    description = "Sum of the items"

    def __init__(self, output: str) -> None:
        self.output = output
        self._output_path = output
        self.count = 0
        self.total = 0
        self.seen: list[int] = []

    def __call__(self, items: Iterator[int]) -> Iterator[int]:
        for x in items:
            self.count += 1
            self.total += x
            self.seen.append(x)
            yield x

    def flush(self) -> str:
        path = os.fspath(self._output_path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as out:
            out.write(json.dumps({"count": self.count, "total": self.total,
                                  "seen": self.seen}) + "\n")
        self.count, self.total, self.seen = 0, 0, []
        return path

    @staticmethod
    def merge(shard_paths: Iterable[str], output_path: str) -> str:
        merged: dict[str, Any] = {"count": 0, "total": 0, "seen": []}
        for shard in shard_paths:
            for line in pathlib.Path(shard).read_text().splitlines():
                part = json.loads(line)
                merged["count"] += part["count"]
                merged["total"] += part["total"]
                merged["seen"] += part["seen"]
        pathlib.Path(output_path).write_text(json.dumps(merged) + "\n")
        return output_path


class PathStats(Filter[int]):
    """Stateful, written the way physicsnemo-curator's filters are: ``_output_path`` is a
    :class:`pathlib.Path` and ``flush`` uses Path methods on it (``.parent.mkdir``)."""

    name = "PathStats"
    description = "Count of the items, flushed through Path methods"

    def __init__(self, output: str) -> None:
        self._output_path = pathlib.Path(output)
        self._rows: list[int] = []

    def __call__(self, items: Iterator[int]) -> Iterator[int]:
        for x in items:
            self._rows.append(x)
            yield x

    def flush(self) -> str | None:
        if not self._rows:
            return None
        self._output_path.parent.mkdir(parents=True, exist_ok=True)
        with self._output_path.open("a") as out:
            out.writelines(f"{x}\n" for x in self._rows)
        self._rows.clear()
        return str(self._output_path)

    @staticmethod
    def merge(shard_paths: list[str], output: str) -> str:
        rows = [line for p in shard_paths for line in pathlib.Path(p).read_text().splitlines()]
        pathlib.Path(output).write_text("".join(f"{r}\n" for r in rows))
        return output


class BreaksInWorkers(Numbers):
    """A source that cannot be loaded in another process: it raises, or exits the process."""

    name = "BreaksInWorkers"

    def __init__(self, n: int, how: str = "raise") -> None:
        super().__init__(n)
        self.how = how
        self.parent = os.getpid()

    def __setstate__(self, state: dict[str, Any]) -> None:
        if os.getpid() != state["parent"]:
            if state["how"] == "exit":
                os._exit(5)
            raise RuntimeError("this source cannot be loaded here")
        self.__dict__.update(state)
