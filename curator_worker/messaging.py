"""How producers and workers talk: the task names and the Celery app factory.

Importing this module reads no environment and builds no app: a producer builds its own
app for the cluster it talks to (:func:`create_app`) and sends tasks by name. The workers'
app, configured from ``CURATOR_*`` at import, is :mod:`curator_worker.worker.app`.
"""

from __future__ import annotations

from celery import Celery

from curator_worker.compat.celery import detach_result_tracking
from curator_worker.compat.kombu import reuse_channel_clients
from curator_worker.config import Settings, celery_config

RUN_BATCH = "curator.run_batch"
GATHER = "curator.gather"


def create_app(settings: Settings, *, with_tasks: bool = False) -> Celery:
    """A Celery app configured for ``settings``.

    Parameters
    ----------
    settings : Settings
        Broker, result backend and behaviour.
    with_tasks : bool
        Import and register this project's tasks (workers); producers send by name. A
        worker of such an app checks every message before running it
        (:mod:`curator_worker.trust`).
    """
    reuse_channel_clients()
    app = Celery("curator_worker", include=["curator_worker.worker.tasks"] if with_tasks else [])
    app.conf.update(celery_config(settings))
    if with_tasks:
        app.conf.worker_consumer = "curator_worker.trust:GuardedConsumer"
    if not with_tasks and settings.effective_result_backend:
        detach_result_tracking(app)  # producers wait on the job store
    return app
