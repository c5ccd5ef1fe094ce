"""One dask LocalCluster for the whole test session, started on first use.

Starting a cluster takes seconds, so the backend tests share one (two single-threaded
worker processes) through ``client=``. It is closed when pytest ends (``add_cleanup``), so
no process outlives the session.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

_CLIENT = pytest.StashKey[Any]()


def shared_client(config: pytest.Config) -> Any:
    """The session's ``distributed.Client`` (created on first call)."""
    client = config.stash.get(_CLIENT, None)
    if client is None:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
        config.stash[_CLIENT] = client

        def close() -> None:
            client.close()
            cluster.close()

        config.add_cleanup(close)
    return client
