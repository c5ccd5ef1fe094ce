"""The ``loky`` backend: batches on a private loky process pool (joblib's).

As in physicsnemo-curator, the backend needs ``joblib``: it uses the loky that joblib
ships. loky's executor starts robust worker processes (no ``fork`` of a threaded parent)
and pickles with cloudpickle, so closures and lambdas work. The pool is private to the run and shut
down with it. A worker that crashes breaks loky's pool (``TerminatedWorkerError``); the
batches it fails are recorded as failed. Use ``process_pool`` for crash isolation and
per-index timeouts.
"""

from __future__ import annotations

from concurrent.futures import Future, as_completed
from typing import Any

from curator_worker.backends.local import LocalBackend, LocalOptions, LocalRun
from curator_worker.backends.units import WorkUnit, pipeline_payload, run_unit_from_payload
from curator_worker.run import register_backend


@register_backend
class LokyBackend(LocalBackend):
    """Batches on a private loky ``ProcessPoolExecutor`` of ``n_jobs`` processes.

    Keyword options, besides ``batch_size``, ``gather`` and ``on_error`` (see
    :mod:`curator_worker.backends.local`): ``initializer`` and ``initargs`` (run once in
    each worker process), ``env`` (environment variables set in the workers before any
    import).
    """

    name = "loky"
    description = "A private loky process pool (robust process start, cloudpickle)."
    requires = ("joblib", "cloudpickle")
    extra = "loky"
    options = frozenset({"initializer", "initargs", "env"})

    def check_options(self, options: LocalOptions) -> None:
        """Validate ``initializer``, ``initargs`` and ``env``."""
        extra = options.extra
        if extra.get("initializer") is not None and not callable(extra["initializer"]):
            raise ValueError(f"initializer must be callable, got {extra['initializer']!r}.")
        if not isinstance(extra.get("initargs", ()), tuple | list):
            raise ValueError("initargs must be a tuple.")
        env = extra.get("env")
        if env is not None and not isinstance(env, dict):
            raise ValueError("env must be a dict of environment variables.")

    def execute(self, run: LocalRun) -> None:
        """Submit every unit to a private loky pool; commit each as it completes."""
        from joblib.externals.loky import ProcessPoolExecutor

        extra = run.options.extra
        payload = pipeline_payload(run.pipeline)
        pool = ProcessPoolExecutor(
            max_workers=min(run.n_jobs, len(run.units)),
            initializer=extra.get("initializer"),
            initargs=tuple(extra.get("initargs", ())),
            env=extra.get("env"),
        )
        futures: dict[Future[Any], WorkUnit] = {}
        try:
            for unit in run.units:
                future = pool.submit(
                    run_unit_from_payload, payload, run.run_id, unit.key, list(unit.indices)
                )
                futures[future] = unit
            run.collect(futures, as_completed)
        finally:
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True, kill_workers=True)
