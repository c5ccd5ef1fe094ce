"""Starting and stopping ``tracemalloc`` for per-index peak memory, without crashing.

``tracemalloc.stop()`` races with native threads that allocate through Python's raw
allocator while it runs (Arrow's thread pools, for one): the process dies with SIGSEGV
in one of those threads (CPython gh-128679, fixed in 3.12.9 and 3.13.2, never in 3.11).
On an interpreter without the fix, tracing that this project started is left on instead
of stopped: later code of the process runs traced (slower allocations) but cannot crash.
"""

from __future__ import annotations

import sys
import tracemalloc

#: Whether ``tracemalloc.stop()`` is safe beside native threads on this interpreter.
STOP_IS_SAFE = sys.version_info >= (3, 13, 2) or (3, 12, 9) <= sys.version_info < (3, 13)


def start_tracing() -> bool:
    """Start tracing unless it is on; return whether this call started it."""
    if tracemalloc.is_tracing():
        return False
    tracemalloc.start()
    return True


def stop_tracing(started: bool) -> None:
    """Stop tracing that :func:`start_tracing` started, where stopping is safe
    (:data:`STOP_IS_SAFE`); elsewhere leave it on (only its peak is reset)."""
    if not started:
        return
    if STOP_IS_SAFE:
        tracemalloc.stop()
    else:
        tracemalloc.reset_peak()
