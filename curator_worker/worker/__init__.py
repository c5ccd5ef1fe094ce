"""The worker side: what runs on every machine of the cluster.

- :mod:`~curator_worker.worker.app`: the workers' Celery app (``celery -A
  curator_worker.app worker``, what ``curator-worker`` starts), built from ``CURATOR_*``.
- :mod:`~curator_worker.worker.tasks`: the two thin tasks (``curator.run_batch``,
  ``curator.gather``) and what a worker process caches between batches.
- :mod:`~curator_worker.worker.attempt`: :class:`BatchAttempt`, one delivery of one batch
  from begin to commit.
- :mod:`~curator_worker.worker.lease`, :mod:`~curator_worker.worker.node`,
  :mod:`~curator_worker.worker.log_context`: the message's lease in a Redis broker, the
  node's entry in the live-node registry, the job/batch/index on every log line.
- :mod:`~curator_worker.worker.cli`: the ``curator-worker`` command;
  ``python -m curator_worker.worker`` (:mod:`~curator_worker.worker.__main__`): the same node
  started without Celery's command line (the embedded cluster's).

Nothing here is imported by producers: they talk to workers through
:mod:`curator_worker.messaging` and the job store (:mod:`curator_worker.store`).
"""
