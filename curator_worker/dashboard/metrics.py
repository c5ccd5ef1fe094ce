"""Job-level Prometheus metrics, read from the job store on each scrape.

Flower exports task metrics (``flower_events_total``, ...); these are the job-level ones
beside them, every series labelled ``job`` (the job id):

=========================================  =======  =========================================
``curator_job_info``                       gauge    1, labels ``state``, ``source`` (the spec's
                                                    source class), ``queue``
``curator_job_indices_planned``            gauge    indices the job runs
``curator_job_indices_total``              counter  indices committed, label ``state`` =
                                                    ``done`` | ``failed`` (a retry that fixes
                                                    failed indices lowers ``failed``)
``curator_job_indices_in_flight``          gauge    indices processed by running batches,
                                                    not committed yet
``curator_job_batches_planned``            gauge    batches planned (retry rounds included)
``curator_job_batches_committed_total``    counter  batches committed
``curator_job_batches_in_flight``          gauge    batches delivered to a worker and not
                                                    committed (0 once the job ended)
``curator_job_worker_processes``           gauge    worker processes that started a batch in
                                                    the last minute
``curator_job_stage_seconds_total``        counter  seconds spent per pipeline stage, label
                                                    ``stage`` (``source``, ``filter[0]:Name``,
                                                    ..., ``sink``), summed over indices
``curator_job_created_timestamp_seconds``  gauge    when the job was submitted (epoch)
``curator_job_finished_timestamp_seconds`` gauge    when it ended (absent while running)
=========================================  =======  =========================================

Only the most recent jobs are exported (``curator-jobs dashboard --metrics-jobs``), so the
number of series stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from curator_worker.dashboard.views import JobViews


class JobCollector:
    """A Prometheus collector reading the ``limit`` most recent jobs at each scrape.

    Parameters
    ----------
    views : JobViews
        The job store reader (its caches keep a finished job's scrape cheap).
    limit : int
        Jobs exported, newest first.
    """

    def __init__(self, views: JobViews, limit: int = 50) -> None:
        self.views = views
        self.limit = limit

    def describe(self) -> list[Metric]:
        """No fixed series: registration must not read the job store."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families of the module docstring."""
        info = GaugeMetricFamily("curator_job_info", "A job: its state, source and queue.",
                                 labels=["job", "state", "source", "queue"])
        planned = GaugeMetricFamily("curator_job_indices_planned",
                                    "Indices the job runs.", labels=["job"])
        indices = CounterMetricFamily("curator_job_indices",
                                      "Indices committed, by outcome (done or failed).",
                                      labels=["job", "state"])
        indices_flight = GaugeMetricFamily(
            "curator_job_indices_in_flight",
            "Indices processed by running batches and not committed yet.", labels=["job"])
        batches_planned = GaugeMetricFamily("curator_job_batches_planned",
                                            "Batches planned.", labels=["job"])
        batches_committed = CounterMetricFamily("curator_job_batches_committed",
                                                "Batches committed.", labels=["job"])
        batches_flight = GaugeMetricFamily(
            "curator_job_batches_in_flight",
            "Batches delivered to a worker and not committed.", labels=["job"])
        workers = GaugeMetricFamily(
            "curator_job_worker_processes",
            "Worker processes that started a batch of the job in the last minute.",
            labels=["job"])
        stages = CounterMetricFamily("curator_job_stage_seconds",
                                     "Seconds spent in each pipeline stage, summed over indices.",
                                     labels=["job", "stage"])
        created = GaugeMetricFamily("curator_job_created_timestamp_seconds",
                                    "When the job was submitted, in epoch seconds.",
                                    labels=["job"])
        finished = GaugeMetricFamily("curator_job_finished_timestamp_seconds",
                                     "When the job ended, in epoch seconds.", labels=["job"])
        for row in self.views.metrics(self.limit):
            status = row["status"]
            job = status.job_id
            info.add_metric([job, status.state, row["source"], status.queue], 1)
            planned.add_metric([job], status.total)
            indices.add_metric([job, "done"], status.done)
            indices.add_metric([job, "failed"], status.failed)
            indices_flight.add_metric([job], row["indices_in_flight"])
            batches_planned.add_metric([job], status.n_batches)
            batches_committed.add_metric([job], status.committed_batches)
            batches_flight.add_metric([job], row["batches_in_flight"])
            workers.add_metric([job], row["workers"])
            for stage, seconds in row["stages"].items():
                stages.add_metric([job, stage], seconds)
            created.add_metric([job], status.created)
            if status.finished is not None:
                finished.add_metric([job], status.finished)
        yield from (info, planned, indices, indices_flight, batches_planned, batches_committed,
                    batches_flight, workers, stages, created, finished)


def job_registry(views: JobViews, limit: int = 50) -> CollectorRegistry:
    """A registry holding only a :class:`JobCollector` (what ``/metrics`` serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(views, limit))
    return registry
