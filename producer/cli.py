"""``curator-submit`` and ``curator-jobs``.

Exit codes: 0 every index done, 1 some indices failed, 2 usage or systemic error.
Errors a user can cause are one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

# Modules that load Celery or Redis (the submit path, the job store, reports, the
# dashboard) are imported inside the commands that need them: `--help` and a bad CURATOR_*
# value answer at once, and `curator-submit` starts an embedded cluster's worker node
# before it imports them (the node boots while they load).
from curator_worker.config import Settings, check_environment, check_queue_name, redact_text
from curator_worker.contract.spec import read_spec_file
from curator_worker.errors import CuratorError
from curator_worker.policy import DEFAULT_MAX_ATTEMPTS, DEFAULT_TRANSIENT, BatchPolicy, RetryPolicy

if TYPE_CHECKING:
    from curator_worker.store import JobStore

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)  # one line, always
    sys.exit(EXIT_ERROR)


#: Most worker processes --workers may ask for, and most indices --batch-size may put in one.
MAX_WORKERS = 10_000
MAX_BATCH_SIZE = 10_000_000
#: Largest number of seconds (or MiB) a numeric option takes: about 31 years.
MAX_OPTION_VALUE = 1e9


def _number(name: str, value: float | None, *, minimum: float = 0.0,
            inclusive: bool = False, maximum: float = MAX_OPTION_VALUE) -> None:
    """Exit 2 unless ``value`` is ``None`` or a finite number in range."""
    if value is None:
        return
    low_ok = value >= minimum if inclusive else value > minimum
    if not math.isfinite(value) or not low_ok or value > maximum:
        low = f"{minimum:g} or more" if inclusive else f"more than {minimum:g}"
        _fail(f"{name} must be a number {low} and at most {maximum:g}, got {value!r}.")


def _run_cli(command: click.Command) -> None:
    """Run a click command turning our errors into one line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_environment()
        command.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_ERROR)
    except click.UsageError as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_ERROR)
    except (CuratorError, ValueError, ImportError) as exc:
        _fail(redact_text(str(exc)))
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{redact_text(exc.strerror or str(exc))}{where}.")
    except KeyboardInterrupt:
        click.echo("interrupted; the job keeps running on the cluster", err=True)
        sys.exit(130)
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        _fail(f"the job store failed: {type(exc).__name__}: {redact_text(str(exc))}")


def _is_redis_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a redis-py error (redis is imported only by the commands that
    use it, so without it loaded no such error can have been raised)."""
    redis = sys.modules.get("redis")
    return redis is not None and isinstance(exc, redis.RedisError)


def _interrupted(job_id: str, embedded: bool) -> None:
    """Ctrl-C while waiting: say what happens to the job, and how to go on."""
    if embedded:
        click.echo(f"interrupted: job {job_id} stops with the embedded cluster of this "
                   "command. Run it again to start over.", err=True)
    else:
        click.echo(f"interrupted: job {job_id} keeps running on the cluster. Wait again: "
                   f"curator-jobs wait {job_id}; stop it: curator-jobs cancel {job_id}",
                   err=True)
    sys.exit(130)


def _store(settings: Settings) -> JobStore:
    from curator_worker.store import JobStore

    settings.require_cluster()
    return JobStore.from_url(settings.effective_job_store_url, ttl=settings.job_ttl)


def _progress_mode(as_json: bool, quiet: bool) -> bool | str:
    return False if (as_json or quiet) else True


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  curator-submit examples/demo.yaml --wait
  curator-submit spec.yaml --indices 0-99,200 --batch-size 10 --wait
  CURATOR_BROKER_URL=redis://host:6379/0 curator-submit spec.yaml
\b
Exit codes: 0 all indices done, 1 some failed, 2 usage or systemic error.
With no broker configured (CURATOR_BROKER_URL unset) the job runs on a private
embedded cluster started for it, and --wait is implied.""",
)
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--indices", help="Indices to run, e.g. '0-99,200' (ranges inclusive). Default: all.")
@click.option("--batch-size", type=int,
              help="Indices per task (1 = per-index tasks). Default: auto.")
@click.option("--queue", help="Queue to send tasks to (default: CURATOR_QUEUE or 'curator').")
@click.option("--wait/--no-wait", default=False, help="Wait with a live progress bar and summary.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--broker", help="Broker URL (overrides CURATOR_BROKER_URL).")
@click.option("--workers", type=int, default=None,
              help="Embedded cluster: worker processes to start (default: CPU count). "
                   "Cluster: processes to size batches for (default: ask the live workers).")
@click.option("--timeout", type=float, help="With --wait: give up waiting after this many seconds.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.option("--index-timeout", type=float,
              help="Seconds one index may run; a hung index is recorded as 'timeout'.")
@click.option("--batch-time-limit", type=float,
              help="Seconds one batch may run; unfinished indices are recorded failed.")
@click.option("--retries", type=int, default=0, show_default=True,
              help="Retries of an index failing with a transient error (see --retry-on).")
@click.option("--retry-on", default=",".join(DEFAULT_TRANSIENT), show_default=True,
              help="Comma-separated exception classes treated as transient.")
@click.option("--index-memory-limit", type=float,
              help="MiB one index may allocate; beyond it the index fails with 'memory'.")
@click.option("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS, show_default=True,
              help="Deliveries of a batch whose worker keeps dying before its indices fail.")
@click.option("--metrics/--no-metrics", default=True, show_default=True,
              help="Record per-stage timings of every index.")
@click.option("--trace-memory", is_flag=True,
              help="Record each index's peak Python memory (tracemalloc; slower).")
def submit_command(
    spec: str, indices: str | None, batch_size: int | None, queue: str | None, wait: bool,
    as_json: bool, broker: str | None, workers: int | None, timeout: float | None, quiet: bool,
    index_timeout: float | None, batch_time_limit: float | None, retries: int, retry_on: str,
    index_memory_limit: float | None, max_attempts: int, metrics: bool, trace_memory: bool,
) -> None:
    """Submit the pipeline SPEC (YAML or JSON) as a job and print its id.

    The spec is validated and the batches planned before anything is enqueued.
    """
    for name, value in (("--index-timeout", index_timeout),
                        ("--batch-time-limit", batch_time_limit),
                        ("--index-memory-limit", index_memory_limit)):
        if value is not None and value <= 0:
            _fail(f"{name} must be a positive number of seconds/MiB, got {value:g}.")
        _number(name, value)
    _number("--timeout", timeout)
    if retries < 0:
        _fail(f"--retries must be 0 or more, got {retries}.")
    if retries > 100:
        _fail(f"--retries must be at most 100, got {retries}.")
    if max_attempts < 1:
        _fail(f"--max-attempts must be at least 1, got {max_attempts}.")
    if max_attempts > 100:
        _fail(f"--max-attempts must be at most 100, got {max_attempts}.")
    if queue is not None:
        check_queue_name(queue)
    policy = BatchPolicy(
        index_timeout=index_timeout, batch_time_limit=batch_time_limit,
        index_memory_mb=index_memory_limit, max_attempts=max_attempts,
        retry=RetryPolicy(retries=retries,
                          transient=tuple(n.strip() for n in retry_on.split(",") if n.strip())),
    )
    options = {**policy.as_options(), "metrics": metrics, "trace_memory": trace_memory}
    if batch_size is not None and batch_size < 1:
        _fail(f"--batch-size must be a positive integer, got {batch_size}.")
    if batch_size is not None and batch_size > MAX_BATCH_SIZE:
        _fail(f"--batch-size must be at most {MAX_BATCH_SIZE}, got {batch_size}.")
    if workers is not None and workers < 1:
        _fail(f"--workers must be a positive integer, got {workers}.")
    if workers is not None and workers > MAX_WORKERS:
        _fail(f"--workers must be at most {MAX_WORKERS}, got {workers}.")
    from curator_worker.embedded import cluster_for

    data = read_spec_file(spec)
    settings = Settings.from_env(broker_url=broker, queue=queue)
    if settings.configured and not wait:
        from producer.submit import MAX_JOB_INDICES, submit_job

        if batch_size is not None:
            batch_size = min(batch_size, MAX_JOB_INDICES)
        job = submit_job(data, settings, origin=spec, indices=indices, batch_size=batch_size,
                         n_workers_hint=workers, options=options)
        click.echo(json.dumps({"job_id": job.job_id, "total": job.total,
                               "batches": job.n_batches}) if as_json else job.job_id)
        return

    hint = workers
    if not settings.configured:
        hint = workers or os.cpu_count() or 1
    started = time.monotonic()
    with cluster_for(settings, hint or 1) as (active, cluster):
        # An embedded worker node boots (~0.5-1 s: imports, pool) while these modules load
        # and the spec is checked; a bad spec stops it at once, before anything is submitted.
        from producer.submit import MAX_JOB_INDICES, check_job, submit_job
        from producer.wait import wait_for_job

        if batch_size is not None:
            batch_size = min(batch_size, MAX_JOB_INDICES)
        if cluster is not None:
            check_job(data, origin=spec, indices=indices, batch_size=batch_size)
            if not as_json:
                click.echo(f"no broker configured: started an embedded cluster with {hint} "
                           "worker processes", err=True)
        job = submit_job(data, active, origin=spec, indices=indices, batch_size=batch_size,
                         n_workers_hint=hint, options=options)
        if not as_json:
            click.echo(f"job {job.job_id}: {job.total} indices in {job.n_batches} batches",
                       err=True)
        store = _store(active)
        try:
            status = wait_for_job(store, job.job_id, settings=active,
                                  progress=_progress_mode(as_json, quiet), timeout=timeout,
                                  watchdog=cluster.check_alive if cluster is not None else None,
                                  embedded=cluster is not None)
        except KeyboardInterrupt:
            _interrupted(job.job_id, embedded=cluster is not None)
        from producer.job_views import print_summary

        print_summary(status, store, as_json, embedded=cluster is not None)
    if cluster is not None and not as_json:
        click.echo(f"embedded cluster stopped ({time.monotonic() - started:.1f}s in all)",
                   err=True)
    sys.exit(status.exit_code())


_broker_option = click.option("--broker", help="Broker URL (overrides CURATOR_BROKER_URL).")


class _JobsGroup(click.Group):
    """``curator-jobs``: adds the commands defined in :mod:`producer.job_views` (which
    loads the job store) when a command is looked up or listed, not at import."""

    def _add_job_views(self) -> None:
        if "failures" not in self.commands:
            from producer.job_views import dashboard_command, failures_command

            self.add_command(failures_command)
            self.add_command(dashboard_command)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_job_views()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._add_job_views()
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_JobsGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  curator-jobs list
  curator-jobs status 20261124-101500-ab12cd34
  curator-jobs wait 20261124-101500-ab12cd34 --json
  curator-jobs retry 20261124-101500-ab12cd34 --wait
  curator-jobs report 20261124-101500-ab12cd34 --out report/
\b
The job store is the Redis of CURATOR_JOB_STORE_URL, else CURATOR_RESULT_BACKEND,
else CURATOR_BROKER_URL.""",
)
def jobs_group() -> None:
    """Inspect, wait for, cancel, resume and retry jobs in the job store."""



@jobs_group.command("status")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_broker_option
def status_command(job_id: str, as_json: bool, broker: str | None) -> None:
    """Show JOB_ID's state, counts and first failures. Exit code as for submit."""
    store = _store(Settings.from_env(broker_url=broker))
    from producer.job_views import print_summary
    from producer.wait import live_progress

    live = live_progress(store, job_id)
    status = live.status
    print_summary(status, store, as_json, detail=True, live=None if status.is_final else live)
    if not status.is_final and not as_json and status.submit_note():
        click.echo(f"  {status.submit_note()}")
    sys.exit(status.exit_code() if status.is_final else EXIT_OK)


@jobs_group.command("wait")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON at the end.")
@click.option("--timeout", type=float, help="Give up waiting after this many seconds (exit 2).")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@_broker_option
def wait_command(
    job_id: str, as_json: bool, timeout: float | None, quiet: bool, broker: str | None
) -> None:
    """Wait for JOB_ID with a live progress bar, then print its summary."""
    _wait_and_exit(Settings.from_env(broker_url=broker), job_id, as_json=as_json, quiet=quiet,
                   timeout=timeout)


@jobs_group.command("cancel")
@click.argument("job_id")
@_broker_option
def cancel_command(job_id: str, broker: str | None) -> None:
    """Cancel JOB_ID: queued batches are skipped, running ones stop at their next index."""
    from producer.control import cancel_job

    before = cancel_job(Settings.from_env(broker_url=broker), job_id)
    if before in ("succeeded", "partial", "failed", "cancelled"):
        click.echo(f"job {job_id} had already ended ({before}); nothing to cancel")
    else:
        click.echo(f"job {job_id} cancelled")


@jobs_group.command("resume")
@click.argument("job_id")
@click.option("--wait/--no-wait", default=False, help="Wait for the job afterwards.")
@_broker_option
def resume_command(job_id: str, wait: bool, broker: str | None) -> None:
    """Re-send JOB_ID's batches that are not committed (after workers died or a purge)."""
    from producer.control import resume_job

    settings = Settings.from_env(broker_url=broker)
    sent = resume_job(settings, job_id)
    click.echo(f"job {job_id}: re-sent {sent} uncommitted batches" if sent
               else f"job {job_id}: every batch is committed; gather re-sent")
    if wait:
        _wait_and_exit(settings, job_id, as_json=False, quiet=False, timeout=None)


@jobs_group.command("gather")
@click.argument("job_id")
@click.option("--wait/--no-wait", default=False, help="Wait for the job afterwards.")
@_broker_option
def gather_command(job_id: str, wait: bool, broker: str | None) -> None:
    """Merge JOB_ID's committed shards again and finish it (after a failed merge, e.g. a
    full disk, once the cause is fixed)."""
    from producer.control import gather_again

    settings = Settings.from_env(broker_url=broker)
    gather_again(settings, job_id)
    click.echo(f"job {job_id}: gather re-sent")
    if wait:
        _wait_and_exit(settings, job_id, as_json=False, quiet=False, timeout=None)


@jobs_group.command("retry")
@click.argument("job_id")
@click.option("--wait/--no-wait", default=False, help="Wait for the job afterwards.")
@_broker_option
def retry_command(job_id: str, wait: bool, broker: str | None) -> None:
    """Re-run only JOB_ID's failed indices, then gather again. Fix the cause first."""
    from producer.control import retry_job

    settings = Settings.from_env(broker_url=broker)
    count = retry_job(settings, job_id)
    click.echo(f"job {job_id}: retrying {count} failed indices")
    if wait:
        _wait_and_exit(settings, job_id, as_json=False, quiet=False, timeout=None,
                       retrying=True)


@jobs_group.command("list")
@click.option("--limit", type=int, default=20, show_default=True, help="How many jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_broker_option
def list_command(limit: int, as_json: bool, broker: str | None) -> None:
    """List recent jobs, newest first: state, progress, age."""
    if not 1 <= limit <= 10_000:
        _fail(f"--limit must be from 1 to 10000, got {limit}.")
    store = _store(Settings.from_env(broker_url=broker))
    from curator_worker.store.history import job_history, pipeline_summary

    statuses = [store.status(job_id) for job_id in store.list_jobs(limit)]
    pipelines = {s.job_id: pipeline_summary(store.record(s.job_id)["spec"]) for s in statuses}
    if as_json:
        click.echo(json.dumps([
            {**s.as_dict(), "pipeline": pipelines[s.job_id],
             "history": job_history(store, s.job_id)} for s in statuses], indent=2))
        return
    if not statuses:
        click.echo("no jobs")
        return
    now = time.time()
    click.echo(f"{'JOB':<26} {'STATE':<10} {'DONE':>9} {'FAILED':>7} {'TOTAL':>9} {'AGE':>4}  "
               "PIPELINE")
    for s in statuses:
        click.echo(f"{s.job_id:<26} {s.state:<10} {s.done:>9} {s.failed:>7} {s.total:>9} "
                   f"{_age(now - s.created):>4}  {pipelines[s.job_id]}")


@jobs_group.command("report")
@click.argument("job_id")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for report.html and its PNG charts (created if missing).")
@_broker_option
def report_command(job_id: str, out_dir: str, broker: str | None) -> None:
    """Write JOB_ID's report: an HTML page with a worker timeline, time per stage,
    throughput over time, the slowest indices and the failures."""
    try:
        from curator_worker.report import write_report
    except ImportError as exc:
        raise CuratorError(
            f"Reports need matplotlib ({exc}). Install it: pip install 'curator-worker[report]'"
        ) from None
    out = _report_folder(out_dir)
    store = _store(Settings.from_env(broker_url=broker))
    store.status(job_id)  # JobNotFoundError before any file is written
    try:
        from curator_worker.store import Job

        click.echo(str(write_report(Job(job_id, store), out)))
    except OSError as exc:
        _fail(f"cannot write the report into {out}: {exc.strerror or exc}. "
              "Choose another --out folder.")


#: Pseudo file systems no report may be written into.
_SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _report_folder(out_dir: str) -> Path:
    """``out_dir`` if a report can be written there (a folder, or one that can be made)."""
    out = Path(out_dir).expanduser()
    resolved = out.resolve()
    if out.exists() and not out.is_dir():
        _fail(f"--out {out_dir}: it exists and is not a folder. Choose a folder.")
    if any(resolved == top or top in resolved.parents for top in _SYSTEM_FOLDERS):
        _fail(f"--out {out_dir}: {resolved} is a system folder. Choose a folder of your own.")
    existing = next((p for p in (resolved, *resolved.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        _fail(f"--out {out_dir}: {existing or resolved} is not a folder you can write in. "
              "Choose another folder.")
    return out


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _wait_and_exit(settings: Settings, job_id: str, *, as_json: bool, quiet: bool,
                   timeout: float | None, retrying: bool = False) -> None:
    from producer.job_views import print_summary
    from producer.wait import wait_for_job

    _number("--timeout", timeout, inclusive=True)
    store = _store(settings)
    try:
        status = wait_for_job(store, job_id, settings=settings,
                              progress=_progress_mode(as_json, quiet), timeout=timeout,
                              retrying=retrying)
    except KeyboardInterrupt:
        _interrupted(job_id, embedded=False)
    print_summary(status, store, as_json)
    sys.exit(status.exit_code())


def submit_main() -> None:
    """Entry point of ``curator-submit``."""
    _run_cli(submit_command)


def jobs_main() -> None:
    """Entry point of ``curator-jobs``."""
    _run_cli(jobs_group)
