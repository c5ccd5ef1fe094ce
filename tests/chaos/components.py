"""Components of the chaos suite, importable by worker subprocesses (``tests.chaos...``)."""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from curator_worker import Param
from curator_worker.atomic import atomic_path, temp_path_for
from curator_worker.components import NpzPerIndex
from curator_worker.components.filters import FieldStats


class KillMidWriteNpz(NpzPerIndex):
    """:class:`NpzPerIndex` whose process is SIGKILLed in the middle of writing ``kill_index``.

    Only the first time (``marker`` records it), so the redelivered batch then succeeds: the
    same thing as a worker killed while ``NpzPerIndex`` writes its temp file, made certain.
    """

    name = "KillMidWriteNpz"
    description = "NpzPerIndex killed once half-way through one index's atomic write"

    @classmethod
    def params(cls) -> list[Param]:
        return [*super().params(),
                Param("kill_index", "Index whose first write is killed", type=int),
                Param("marker", "File recording that the kill happened", type=str)]

    def __init__(self, output_dir: str, kill_index: int, marker: str,
                 prefix: str = "item") -> None:
        super().__init__(output_dir=output_dir, prefix=prefix)
        self.kill_index = kill_index
        self.marker = marker

    def __call__(self, items: Iterator[dict[str, Any]], index: int) -> list[str]:
        if index == self.kill_index and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            with atomic_path(self.path_for(index)) as tmp:
                tmp.write_bytes(b"half an npz")
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(items, index)


class LeakyTempNpz(NpzPerIndex):
    """:class:`NpzPerIndex` written the way many user sinks write: to a temp name from
    :func:`~curator_worker.atomic.temp_path_for`, renamed when complete, and no cleanup
    when the write fails (a full disk leaves the partial temp behind)."""

    name = "LeakyTempNpz"
    description = "NpzPerIndex through a temp file it does not remove on failure"

    def __call__(self, items: Iterator[dict[str, Any]], index: int) -> list[str]:
        from curator_worker.components.sinks import _item_arrays, _keyed

        path = self.path_for(index)
        os.makedirs(self.output_dir, exist_ok=True)
        tmp = temp_path_for(path)
        with open(tmp, "wb") as fh:
            np.savez(fh, **_keyed(_item_arrays(items)))
        os.replace(tmp, path)
        return [path]


class FillingStats(FieldStats):
    """:class:`FieldStats` whose first merge meets a disk that fills while it writes.

    The disk fills during the merge only (the shards are all written by then). Like many
    user merges, the first one opens the path it is given and writes to it directly; a
    filler file ``filler.bin`` beside the output then takes every free block, once (a
    marker beside the output's folder records it), and the write fails with ``ENOSPC``.
    """

    name = "FillingStats"
    description = "FieldStats whose first merge meets a full disk"

    @staticmethod
    def merge(shard_paths: Iterable[str], output_path: str) -> str:
        folder = Path(output_path).parent
        marker = folder.parent / "merge-filled-once"
        if marker.exists():
            return FieldStats.merge(shard_paths, output_path)
        marker.write_text(str(os.getpid()))
        with open(output_path, "wb", buffering=0) as out:
            out.write(b"{")
            with open(folder / "filler.bin", "wb", buffering=0) as fh:
                for size in (65536, 512):
                    try:
                        while True:
                            fh.write(b"\0" * size)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
            while True:  # the merged document no longer fits: ENOSPC
                out.write(b" " * 65536)


class SlowFirstMergeStats(FieldStats):
    """:class:`FieldStats` whose first merge announces itself and takes 3 s.

    It writes its pid to ``slow-merge`` beside the output's folder, so a test can freeze
    the node that is merging while it merges.
    """

    name = "SlowFirstMergeStats"
    description = "FieldStats whose first merge is slow and says which process runs it"

    @staticmethod
    def merge(shard_paths: Iterable[str], output_path: str) -> str:
        marker = Path(output_path).parent.parent / "slow-merge"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(3.0)
        return FieldStats.merge(shard_paths, output_path)
