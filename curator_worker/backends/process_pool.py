"""The ``process_pool`` backend: a supervised pool of worker processes.

More than :class:`concurrent.futures.ProcessPoolExecutor`:

- **Per-index timeout** (``timeout=`` seconds, like pebble's ``schedule(timeout=)``): an
  index that runs longer is recorded as failed (kind ``timeout``), its worker process is
  killed and replaced, and the run goes on.
- **Crash isolation**: a worker that dies (segfault, ``os._exit``, the OOM killer) records
  the index it was running as failed (kind ``crash``) instead of breaking the pool
  (``BrokenProcessPool``); a fresh process takes over.
- **Worker recycling** (``max_tasks_per_child``) and an ``initializer`` (+ ``initargs``)
  run once in each worker process.

How a lost batch is redone: a killed or crashed worker loses the filter state of its batch
(it was never flushed). The rest of the batch is re-run in a fresh process with fresh filter
copies, as a new sub-batch: when the pipeline has stateful filters, that is every index of
the batch except the failed one (the indices that had finished are run again, so their
contribution is neither lost nor counted twice); without stateful filters, the finished
indices keep their results and only the indices not yet started are re-run.

The parent and each worker talk over a pipe: the parent sends ``(key, indices)`` units; the
worker answers ``ready`` once, then ``start i`` / ``done i`` per index and ``batch`` (results
and committed shard paths) per unit. The pipeline travels once per worker, pickled with
cloudpickle (closures and lambdas work).
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from collections.abc import Callable
from typing import Any

from curator_worker.backends.local import LocalBackend, LocalOptions, LocalRun
from curator_worker.backends.supervised_pool import UNGUARDED_MAIN_EXIT, Supervisor
from curator_worker.run import register_backend

log = logging.getLogger(__name__)

@register_backend
class ProcessPoolBackend(LocalBackend):
    """Batches on a supervised pool of ``n_jobs`` worker processes.

    Keyword options, besides ``batch_size``, ``gather`` and ``on_error`` (see
    :mod:`curator_worker.backends.local`):

    ``timeout`` : float, optional
        Seconds an index may run; past it the index fails (kind ``timeout``) and its
        worker process is killed and replaced.
    ``max_tasks_per_child`` : int, optional
        Batches a worker process runs before it is replaced (``batch_size=1`` makes that
        per index).
    ``initializer`` : callable, optional
        Called with ``*initargs`` once in each worker process before any batch; if it
        raises, the run fails at once (``JobFailedError`` with state ``failed``).
    ``initargs`` : tuple, optional
        Arguments of ``initializer``.
    ``mp_context`` : {"spawn", "forkserver", "fork"}, optional
        How worker processes start (default ``spawn``: safe with threads, on every OS;
        scripts need the ``if __name__ == "__main__":`` guard).

    A worker that crashes records the index it was running as failed (kind ``crash``);
    the run goes on.
    """

    name = "process_pool"
    description = "Supervised worker processes: per-index timeout, crash isolation, recycling."
    requires = ("cloudpickle",)
    extra = "local"
    options = frozenset({"timeout", "max_tasks_per_child", "initializer", "initargs",
                         "mp_context"})

    def check_options(self, options: LocalOptions) -> None:
        """Validate ``timeout``, ``max_tasks_per_child``, ``initializer`` and ``mp_context``."""
        extra = options.extra
        timeout = extra.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        max_tasks = extra.get("max_tasks_per_child")
        if max_tasks is not None and (
            isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1
        ):
            raise ValueError(
                f"max_tasks_per_child must be a positive integer, got {max_tasks!r}."
            )
        initializer: Callable[..., Any] | None = extra.get("initializer")
        if initializer is not None and not callable(initializer):
            raise ValueError(f"initializer must be callable, got {initializer!r}.")
        if not isinstance(extra.get("initargs", ()), tuple | list):
            raise ValueError("initargs must be a tuple.")
        method = extra.get("mp_context")
        if method is not None and method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"mp_context must be one of {', '.join(multiprocessing.get_all_start_methods())},"
                f" got {method!r}."
            )

    def run(self, pipeline: Any, config: Any) -> list[list[str]]:
        """As :meth:`LocalBackend.run`; in a worker that is still starting, which means
        the main script is re-run without a ``__main__`` guard, exit quietly: the parent
        says what to fix, once."""
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            sys.exit(UNGUARDED_MAIN_EXIT)
        return super().run(pipeline, config)

    def execute(self, run: LocalRun) -> None:
        """Run every unit on supervised worker processes."""
        Supervisor(run, run.options).execute()
