"""``curator-jobs dashboard`` and ``curator-jobs failures``: views of the job store.

Both are registered on the ``curator-jobs`` group by :mod:`producer.cli`. Errors a user
can cause are raised as :class:`~curator_worker.errors.CuratorError` (one line, exit 2,
printed by the CLI runner).
"""

from __future__ import annotations

import json
import os

import click

from curator_worker.config import Settings, redact_url
from curator_worker.failures import FailureGroup, group_failures, shorten_ranges
from curator_worker.store import JobStore

#: Characters of an index range list printed per group before it is cut.
MAX_RANGES_CHARS = 400


def _store(broker: str | None) -> JobStore:
    settings = Settings.from_env(broker_url=broker)
    settings.require_cluster()
    return JobStore.from_url(settings.effective_job_store_url, ttl=settings.job_ttl)


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


@click.command("failures", epilog="""\b
Examples:
  curator-jobs failures 20261124-101500-ab12cd34
  curator-jobs failures 20261124-101500-ab12cd34 --traceback
  curator-jobs failures 20261124-101500-ab12cd34 --json | jq '.groups[0].indices'""")
@click.argument("job_id")
@click.option("--traceback", "with_traceback", is_flag=True,
              help="Show one traceback per group (that of its first index).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--broker", help="Broker URL (overrides CURATOR_BROKER_URL).")
def failures_command(job_id: str, with_traceback: bool, as_json: bool,
                     broker: str | None) -> None:
    """Show JOB_ID's failed indices grouped by error (type and message), with their indices.

    Messages that differ only in numbers are one group; indices print as ranges
    (3-7,12), the form `curator-submit --indices` reads. Exit code 0 (the job exists).
    """
    store = _store(broker)
    status = store.status(job_id)
    groups = group_failures(store.failures(job_id)) if status.failed else []
    if as_json:
        click.echo(json.dumps({
            "job_id": job_id, "state": status.state, "failed": status.failed,
            "groups": [g.as_dict(with_traceback=with_traceback) for g in groups],
        }, indent=2))
        return
    if not groups:
        click.echo(f"job {job_id} ({status.state}): no failed indices")
        return
    count = sum(g.count for g in groups)
    click.echo(f"job {job_id} ({status.state}): {count} failed "
               f"{'index' if count == 1 else 'indices'} in {len(groups)} "
               f"{'group' if len(groups) == 1 else 'groups'}")
    for group in groups:
        _echo_group(group, with_traceback)
    if not with_traceback:
        click.echo(f"(tracebacks: curator-jobs failures {job_id} --traceback)")


def _echo_group(group: FailureGroup, with_traceback: bool) -> None:
    kinds = ", ".join(k for k in group.kinds if k != "error")
    click.echo("")
    click.echo(f"{group.count} × {group.type}: {_first_line(group.message)}"
               + (f" [{kinds}]" if kinds else ""))
    click.echo(f"  indices: {shorten_ranges(group.ranges, MAX_RANGES_CHARS)}")
    if group.hosts:
        click.echo(f"  hosts: {', '.join(group.hosts)}")
    if with_traceback and group.traceback:
        click.echo(f"  traceback of index {group.example}:")
        for line in group.traceback.rstrip().splitlines():
            click.echo(f"    {line}")


@click.command("dashboard", epilog="""\b
Examples:
  curator-jobs dashboard                       # http://127.0.0.1:5580/
  CURATOR_DASHBOARD_BASIC_AUTH=admin:SECRET curator-jobs dashboard --address 0.0.0.0
  curl -u admin:SECRET http://host:5580/metrics""")
@click.option("--address", default=None,
              help="Address to bind (default 127.0.0.1). Any other address needs "
                   "CURATOR_DASHBOARD_BASIC_AUTH.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to listen on (default 5580).")
@click.option("--jobs", "n_jobs", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Recent jobs the page lists.")
@click.option("--metrics-jobs", type=click.IntRange(1, 10000), default=50, show_default=True,
              help="Recent jobs /metrics exports.")
@click.option("--broker", help="Broker URL (overrides CURATOR_BROKER_URL).")
def dashboard_command(address: str | None, port: int | None, n_jobs: int, metrics_jobs: int,
                      broker: str | None) -> None:
    """Serve a live dashboard of the job store: jobs, progress, throughput, worker
    lanes, stage times, failures and pipelines, plus Prometheus metrics on /metrics.

    \b
    Basic auth: CURATOR_DASHBOARD_BASIC_AUTH=user:password[,user2:password2]. Without it
    the dashboard only binds a loopback address; with it, every page needs it.
    """
    from curator_worker.dashboard import (
        AUTH_ENV,
        DEFAULT_ADDRESS,
        DEFAULT_PORT,
        DashboardConfig,
        parse_credentials,
        serve,
    )

    config = DashboardConfig(
        address=DEFAULT_ADDRESS if address is None else address,
        port=DEFAULT_PORT if port is None else port,
        credentials=parse_credentials(os.environ.get(AUTH_ENV, "")),
        jobs=n_jobs, metrics_jobs=metrics_jobs)
    config.check()  # before connecting: a refused address costs nothing
    settings = Settings.from_env(broker_url=broker)
    store = _store(broker)

    def ready(url: str) -> None:
        auth = "basic auth on" if config.credentials else "no auth, loopback only"
        click.echo(f"curator-jobs dashboard: {url} ({auth}); metrics on {url}metrics; "
                   f"job store {redact_url(settings.effective_job_store_url)}", err=True)

    try:
        serve(store, config, on_ready=ready)
    except KeyboardInterrupt:
        click.echo("dashboard stopped", err=True)
