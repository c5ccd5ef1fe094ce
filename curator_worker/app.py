"""The Celery app: this project's tasks, configured from ``CURATOR_*`` settings.

Workers run ``celery -A curator_worker.app worker`` (what ``curator-worker`` starts).
Producers build their own app for the cluster they talk to with :func:`create_app` and send
tasks by name, so one Python process can talk to several clusters.
"""

from __future__ import annotations

from celery import Celery

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
    app = Celery("curator_worker", include=["curator_worker.tasks"] if with_tasks else [])
    app.conf.update(celery_config(settings))
    if with_tasks:
        app.conf.worker_consumer = "curator_worker.trust:GuardedConsumer"
    if not with_tasks and settings.effective_result_backend:
        _detach_result_tracking(app)
    return app


def _detach_result_tracking(app: Celery) -> None:
    """Producers wait on the job store, never on Celery results.

    Stop the Redis result backend from subscribing to a pub/sub channel per task sent
    (celery#3808) and from tracking the returned ``AsyncResult`` objects, whose finalizers
    otherwise reconnect to Redis at interpreter exit.
    """
    backend = app.backend
    backend.on_task_call = lambda producer, task_id: None
    backend.add_pending_result = lambda result, *args, **kwargs: result
    backend.add_pending_results = lambda results, *args, **kwargs: list(results)
    backend.remove_pending_result = lambda result: result


#: The workers' app, configured from the environment at import.
app = create_app(Settings.from_env(), with_tasks=True)
