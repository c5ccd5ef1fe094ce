"""The ``dask`` backend: batches as tasks on a dask.distributed cluster.

Without ``client=`` or ``scheduler_address=`` a private ``distributed.LocalCluster`` of
``n_jobs`` single-threaded worker processes is started for the run and closed after it.
With ``client=`` the caller's client is used (and left open); with ``scheduler_address=``
a client is connected to that scheduler for the run (``n_jobs`` is then ignored). The
pipeline is pickled with cloudpickle and scattered to the workers once. Workers write sink
outputs and filter shards themselves, so with a remote cluster every path must be on storage
every worker and this process see, under the same name.
"""

from __future__ import annotations

import logging
from typing import Any

from curator_worker.backends.local import LocalBackend, LocalOptions, LocalRun
from curator_worker.backends.units import pipeline_payload, run_unit_from_payload
from curator_worker.run import register_backend

log = logging.getLogger(__name__)


@register_backend
class DaskBackend(LocalBackend):
    """Batches as ``dask.distributed`` tasks; results gathered here.

    Keyword options, besides ``batch_size``, ``gather`` and ``on_error`` (see
    :mod:`curator_worker.backends.local`):

    ``client`` : distributed.Client, optional
        Use this client (it is not closed).
    ``scheduler_address`` : str, optional
        Connect to this scheduler (``tcp://host:8786``) for the run.
    """

    name = "dask"
    description = "dask.distributed tasks (a private LocalCluster unless a client is given)."
    requires = ("dask", "distributed", "cloudpickle")
    extra = "dask"
    options = frozenset({"client", "scheduler_address"})

    def check_options(self, options: LocalOptions) -> None:
        """``client`` and ``scheduler_address`` are exclusive."""
        extra = options.extra
        if extra.get("client") is not None and extra.get("scheduler_address") is not None:
            raise ValueError("Give either client= or scheduler_address=, not both.")

    def execute(self, run: LocalRun) -> None:
        """Submit every unit as a task; commit each as it completes."""
        from distributed import Client, LocalCluster, as_completed

        extra = run.options.extra
        client: Any = extra.get("client")
        cluster: Any = None
        own_client = client is None
        if client is None and extra.get("scheduler_address") is not None:
            client = Client(extra["scheduler_address"])
        elif client is None:
            cluster = LocalCluster(
                n_workers=min(run.n_jobs, len(run.units)),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
        try:
            [payload] = client.scatter([pipeline_payload(run.pipeline)], broadcast=True,
                                       hash=False)
            futures = {
                client.submit(
                    run_unit_from_payload, payload, run.run_id, unit.key, list(unit.indices),
                    key=f"curator-{run.run_id}-{unit.key}", pure=False,
                ): unit
                for unit in run.units
            }
            try:
                run.collect(futures, as_completed)
            finally:
                client.cancel(list(futures))
        finally:
            if own_client:
                client.close()
            if cluster is not None:
                cluster.close()
