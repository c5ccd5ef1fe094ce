"""What ``curator-jobs`` prints about jobs: a job's summary (:func:`print_summary`, after
``submit --wait``, ``wait`` and ``status``), ``curator-jobs dashboard`` and
``curator-jobs failures``: views of the job store.

The commands are registered on the ``curator-jobs`` group by :mod:`producer.cli`. Errors a user
can cause are raised as :class:`~curator_worker.errors.CuratorError` (one line, exit 2,
printed by the CLI runner).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from curator_worker.config import Settings, redact_text, redact_url
from curator_worker.failures import FailureGroup, group_failures, shorten_ranges
from curator_worker.progress import human_rate
from curator_worker.store import JobStatus, JobStore
from curator_worker.store.history import (
    describe_history,
    job_history,
    pipeline_params,
    pipeline_summary,
)
from producer.wait import LiveProgress

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


def job_timings(status: JobStatus, store: JobStore) -> dict[str, Any]:
    """Wall time, throughput, worker processes and seconds per stage, from the job store."""
    end = status.finished or time.time()
    start = status.started or status.created
    wall = max(end - start, 1e-9) if status.processed else 0.0
    stages: dict[str, float] = {}
    workers: set[str] = set()
    for record in store.commit_records(status.job_id).values():
        workers.add(f"{record.get('node') or record.get('host')}/{record.get('pid')}")
        for stage, seconds in (record.get("stages") or {}).items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return {
        "wall_seconds": round(wall, 3),
        "indices_per_second": round(status.processed / wall, 2) if wall else 0.0,
        "worker_processes": len(workers),
        "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
    }


#: Failure groups printed by the summary (the rest: `curator-jobs failures JOB`).
SHOWN_GROUPS = 5
#: A group of at most this many indices is listed index by index.
LISTED_ONE_BY_ONE = 2


def print_summary(status: JobStatus, store: JobStore, as_json: bool, detail: bool = False,
             embedded: bool = False, live: LiveProgress | None = None) -> None:
    """Print a job's summary; ``detail`` (status): timings, pipeline, params, history.

    ``embedded``: the job ran on the embedded cluster, gone after this command, so no
    ``curator-jobs`` command is suggested; ``live``: the live progress of a running job.
    """
    failures = store.failures(status.job_id) if status.failed else {}
    groups = group_failures(failures)
    timings = job_timings(status, store) if detail or as_json else None
    record = store.record(status.job_id) if detail or as_json else None
    history = job_history(store, status.job_id) if detail or as_json else []
    if as_json:
        data = status.as_dict()
        if data.get("error"):
            data["error"] = redact_text(str(data["error"]))
        data["timings"] = timings
        data["failures"] = {
            str(i): {"type": e.get("type"), "message": redact_text(e.get("message") or ""),
                     "host": e.get("host"),
                     "attempt": e.get("attempt")}
            for i, e in failures.items()
        }
        data["failure_groups"] = [
            {**g.as_dict(), "message": redact_text(g.message)} for g in groups]
        if record is not None:
            data["pipeline"] = pipeline_summary(record["spec"])
            data["history"] = history
        if live is not None:
            data["live"] = {"processed": live.live + status.failed, "inflight": live.inflight,
                            "workers": live.workers, "note": live.note}
        click.echo(json.dumps(data, indent=2))
        return
    took = ""
    if status.finished and status.created:
        took = f" in {status.finished - status.created:.1f}s"
    click.echo(
        f"job {status.job_id} {status.state}{took}: {status.done} succeeded, "
        f"{status.failed} failed, {status.total} total "
        f"({status.committed_batches}/{status.n_batches} batches)"
    )
    if record is not None:
        click.echo(f"  pipeline: {pipeline_summary(record['spec'])}")
        for role, name, params in pipeline_params(record["spec"]):
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            click.echo(f"    {role} {name}({redact_text(shown)})")
        for entry in history:
            click.echo(f"  {describe_history(entry)}")
    if live is not None and not status.is_final:
        click.echo(f"  running: {live.live + status.failed}/{status.total} indices processed "
                   f"({live.inflight} in running batches), {live.note}")
    if status.error:
        click.echo(f"  error: {redact_text(status.error)}")
    if timings:
        click.echo(f"  timing: {timings['wall_seconds']:.1f}s wall, "
                   f"{human_rate(timings['indices_per_second'], ' indices/s')}, "
                   f"{timings['worker_processes']} worker processes")
        total = sum(timings["stage_seconds"].values()) or 1.0
        for stage, seconds in sorted(timings["stage_seconds"].items(), key=lambda kv: -kv[1]):
            click.echo(f"    {stage:<32} {seconds:10.2f}s  {100 * seconds / total:5.1f}%")
    for group in groups[:SHOWN_GROUPS]:
        first = next(iter(redact_text(group.message).splitlines()), "")
        if group.count <= LISTED_ONE_BY_ONE:
            for index in group.indices:
                lines = redact_text(failures[index].get("message") or "").splitlines()
                click.echo(f"  index {index}: {group.type}: {lines[0] if lines else ''}")
        else:
            click.echo(f"  {group.count} indices ({shorten_ranges(group.ranges, 120)}): "
                       f"{group.type}: {first}")
    if len(groups) > SHOWN_GROUPS:
        rest = sum(g.count for g in groups[SHOWN_GROUPS:])
        click.echo(f"  ... and {rest} more indices in {len(groups) - SHOWN_GROUPS} more groups")
    if failures and embedded:
        click.echo("  (the job ran on an embedded cluster, stopped with this command: "
                   "`curator-jobs` cannot show it later. Set CURATOR_BROKER_URL and start "
                   "workers with `curator-worker` to keep jobs to inspect, retry and report.)")
    elif failures:
        click.echo(f"  tracebacks and every index: curator-jobs failures {status.job_id} "
                   "--traceback")
