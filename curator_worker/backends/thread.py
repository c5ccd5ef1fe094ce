"""The ``thread`` backend: batches on a pool of threads in this process (I/O-bound work).

Threads share the pipeline object, so nothing is pickled (closures and lambdas work) and
start-up is instant; the GIL makes it a poor fit for CPU-bound pure-Python work (use
``process_pool``, ``loky`` or ``dask`` there). Stateful filters are still copied per batch
and merged from shards, exactly like the process backends. Sources, sinks and stateless
filters are called from several threads at once, so they must be thread-safe.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, as_completed

from curator_worker.backends.local import LocalBackend, LocalRun
from curator_worker.backends.units import WorkUnit, run_unit
from curator_worker.memory_tracing import start_tracing, stop_tracing
from curator_worker.run import register_backend


@register_backend
class ThreadBackend(LocalBackend):
    """Runs batches on ``n_jobs`` threads of the calling process.

    Keyword options: ``batch_size``, ``gather``, ``on_error`` (see
    :mod:`curator_worker.backends.local`).

    Examples
    --------
    >>> from curator_worker import run_pipeline
    >>> from curator_worker.components import SyntheticArrays, NpzPerIndex
    >>> p = SyntheticArrays(count=4).write(NpzPerIndex(output_dir="/tmp/cw-thread-doc"))
    >>> len(run_pipeline(p, backend="thread", n_jobs=2))
    4
    """

    name = "thread"
    description = "A pool of threads in this process (I/O-bound pipelines)."

    def execute(self, run: LocalRun) -> None:
        """Submit every unit to a thread pool; commit each as it completes.

        With ``track_memory``, memory is traced for the whole run (tracing is per process,
        so each index's peak is the process's while it ran, other threads included).
        """
        tracing = (start_tracing() if run.pipeline.track_metrics and run.pipeline.track_memory
                   else False)
        try:
            self._execute(run)
        finally:
            stop_tracing(tracing)

    def _execute(self, run: LocalRun) -> None:
        with ThreadPoolExecutor(
            max_workers=run.n_jobs, thread_name_prefix="curator-thread"
        ) as pool:
            futures: dict[Future, WorkUnit] = {
                pool.submit(
                    run_unit, run.pipeline, unit.key, unit.indices, run.run_id,
                    on_index=run.index_finished,
                ): unit
                for unit in run.units
            }
            try:
                run.collect(futures, as_completed)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


@register_backend
class ThreadPoolBackend(ThreadBackend):
    """``thread_pool``: physicsnemo-curator's name of the :class:`ThreadBackend`."""

    name = "thread_pool"
    description = "Alias of 'thread' (physicsnemo-curator's name)."
