"""The workers' Celery app, configured from ``CURATOR_*`` settings when imported.

Workers run ``celery -A curator_worker.app worker`` (what ``curator-worker`` starts).
Producers do not import it: they build their own app for the cluster they talk to with
:func:`curator_worker.messaging.create_app` and send tasks by name, so one Python process
can talk to several clusters.
"""

from __future__ import annotations

from curator_worker.config import Settings
from curator_worker.messaging import GATHER, RUN_BATCH, create_app

__all__ = ["GATHER", "RUN_BATCH", "app", "create_app"]

#: The workers' app, configured from the environment at import.
app = create_app(Settings.from_env(), with_tasks=True)
