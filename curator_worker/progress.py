"""Progress display: one rich bar on a terminal, periodic plain log lines elsewhere.

Both the sequential backend (counting locally) and ``--wait`` (reading the job store's
counters, so it works from any machine) report through :class:`ProgressReporter`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("curator_worker.progress")


def human_rate(per_second: float, unit: str = "/s") -> str:
    """A rate for people: three significant digits, ``k``/``M`` above a thousand.

    Examples
    --------
    >>> human_rate(150534.2), human_rate(12.345), human_rate(0.25), human_rate(2_500_000)
    ('150.5k/s', '12.3/s', '0.25/s', '2.5M/s')
    """
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= size:
            return f"{per_second / size:.1f}{suffix}{unit}"
    if per_second >= 10:
        return f"{per_second:.1f}{unit}"
    return f"{per_second:.2g}{unit}" if per_second > 0 else f"0{unit}"


class ProgressReporter:
    """Shows done/failed out of total, with rate and ETA.

    Parameters
    ----------
    total : int
        Indices in the run.
    mode : bool | str
        ``True`` or ``"bar"``: a bar on a TTY, log lines otherwise; ``"log"``: log lines;
        ``False``: nothing.
    label : str
        Shown before the bar and in log lines.
    stream : TextIO
        Where to draw (default stderr).
    interval : float
        Seconds between log lines.
    started : float, optional
        Wall-clock time (epoch seconds) the work started, for the rate of work that began
        before this reporter (a job submitted elsewhere); default: now.
    """

    def __init__(
        self,
        total: int,
        mode: bool | str = True,
        label: str = "indices",
        stream: TextIO | None = None,
        interval: float = 5.0,
        started: float | None = None,
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = interval
        self.start = time.monotonic()
        self.started_wall = started if started is not None else time.time()
        self._last_log = 0.0
        self._progress: Progress | None = None
        self._task = None
        enabled = mode not in (False, None, "none")
        is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.mode = "none" if not enabled else ("bar" if mode != "log" and is_tty else "log")

    def __enter__(self) -> ProgressReporter:
        if self.mode == "bar":
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, extra="")
        return self

    def update(self, done: int, failed: int = 0, note: str = "", force: bool = False) -> None:
        """Report ``done`` succeeded and ``failed`` failed indices so far."""
        processed = done + failed
        extra = f"failed {failed}" if failed else ""
        if note:
            extra = f"{extra} {note}".strip()
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=processed, extra=extra)
            return
        if self.mode != "log":
            return
        now = time.monotonic()
        if not force and now - self._last_log < self.interval:
            return
        self._last_log = now
        elapsed = time.time() - self.started_wall
        rate = processed / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - processed) / rate:.0f}s" if rate > 0 else "?"
        line = (
            f"{self.label}: {processed}/{self.total} ({done} done, {failed} failed) "
            f"{human_rate(rate)} eta {eta}"
        )
        if note:
            line += f" {note}"
        self.stream.write(line + "\n")
        self.stream.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


def nice_bin_width(span: float, target_bins: int = 40) -> float:
    """A 1-2-5 bin width that cuts ``span`` seconds into about ``target_bins`` bins.

    Parameters
    ----------
    span : float
        Seconds to cover.
    target_bins : int
        Bins wanted.

    Returns
    -------
    float
        At least 1 ms.

    Examples
    --------
    >>> nice_bin_width(10.0)
    0.5
    >>> nice_bin_width(0.0)
    0.001
    """
    raw = max(span / max(target_bins, 1), 1e-3)
    exponent = math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        width = factor * 10.0**exponent
        if width >= raw * 0.999:
            return float(f"{width:.3g}")
    return float(f"{10.0 ** (exponent + 1):.3g}")  # pragma: no cover - loop always returns
