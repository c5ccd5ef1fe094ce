"""``curator-worker``: a Celery worker node of this project's app, and ``curator-worker flower``.

The worker runs a prefork pool with task events on (Flower sees tasks; off with
``CURATOR_TASK_EVENTS=0``), late
acknowledgement and one task per process at a time (from the app's settings), and recycles
its processes after ``--max-tasks-per-child`` tasks or ``--max-memory-per-child`` of
resident memory. Options it does not know are passed on to ``celery worker`` unchanged.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time

import click

from curator_worker import flower_guard
from curator_worker.config import (
    Settings,
    check_environment,
    is_redis_url,
    redact_text,
    redact_url,
)
from curator_worker.errors import ConfigurationError, CuratorError

#: Tasks a worker process runs before it is replaced (bounds slow leaks in user code).
DEFAULT_MAX_TASKS_PER_CHILD = 1000
#: Resident memory after which a worker process is replaced (checked after each task).
DEFAULT_MAX_MEMORY_PER_CHILD = "4GiB"
_UNITS = {"": 1, "k": 1, "kb": 1, "kib": 1, "m": 1024, "mb": 1024, "mib": 1024,
          "g": 1024**2, "gb": 1024**2, "gib": 1024**2}


def memory_kib(text: str) -> int:
    """``"4GiB"``, ``"512MiB"`` or a plain number of KiB (Celery's unit) as KiB.

    Examples
    --------
    >>> memory_kib("2GiB"), memory_kib("512MB"), memory_kib("300000")
    (2097152, 524288, 300000)
    """
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not found or found.group(2).lower() not in _UNITS or len(found.group(1)) > 15:
        raise ConfigurationError(
            f"Bad memory size {text!r}: use a number of KiB or a size like 512MiB or 4GiB."
        )
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


#: Seconds one check of the broker (or job store) may take before it counts as no answer.
PROBE_TIMEOUT = 3.0
#: Longest pause between two checks while the broker does not answer.
PROBE_MAX_PAUSE = 10.0


class _Stop(BaseException):  # noqa: N818 - not an error: a BaseException, like SystemExit
    """SIGTERM or SIGINT arrived while the worker waited for its broker (not an error: no
    ``except Exception`` in redis or kombu may swallow it)."""


def _probe(url: str) -> None:
    """Raise unless the server of ``url`` answers within :data:`PROBE_TIMEOUT` seconds."""
    if is_redis_url(url):
        from curator_worker.store.connection import ping_once

        ping_once(url, PROBE_TIMEOUT)
        return
    from kombu import Connection

    with Connection(url, connect_timeout=PROBE_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT)


def _wait_for_servers(settings: Settings) -> bool:
    """Wait until the broker and the job store answer, saying so on stderr; False if stopped.

    Celery's own start blocks without a word, and without heeding SIGTERM, on a broker
    that accepts connections but never answers. Here each check takes at most
    :data:`PROBE_TIMEOUT` seconds, every failed one is one line, and SIGTERM or Ctrl-C
    stops the worker at once.
    """
    urls = {"broker": settings.broker_url, "job store": settings.effective_job_store_url}
    what = "broker"

    def stop(signum: int, frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    pause = 1.0
    try:
        for what, url in urls.items():
            if not url or (what == "job store" and url == settings.broker_url):
                continue
            while True:
                try:
                    _probe(url)
                    break
                except Exception as exc:  # noqa: BLE001 - redis and kombu raise many kinds
                    reason = redact_text(str(exc).splitlines()[0] if str(exc) else "")
                    click.echo(
                        f"curator-worker: the {what} at {redact_url(url)} does not answer "
                        f"({type(exc).__name__}: {reason}); trying again in {pause:.0f} s. "
                        "Check the URL and that the server is running (SIGTERM or Ctrl-C "
                        "stops).", err=True)
                    time.sleep(pause)
                    pause = min(pause * 2, PROBE_MAX_PAUSE)
    except _Stop as exc:
        click.echo(f"curator-worker: stopped by {exc} while waiting for the {what}", err=True)
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return True


def _env_count(name: str, default: int) -> int:
    """A positive whole number from the environment variable ``name`` (or ``default``)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or int(raw) < 1:
        raise ConfigurationError(
            f"{name}={raw!r} is not a positive whole number. Set e.g. {default}, or unset it."
        )
    return int(raw)


_CONTEXT = {"help_option_names": ["-h", "--help"], "ignore_unknown_options": True,
            "allow_extra_args": True, "max_content_width": 100}


@click.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  CURATOR_BROKER_URL=redis://host:6379/0 curator-worker --concurrency 8
  curator-worker -c 4 -n gpu1@%h -Q curator,big --max-tasks-per-child 100
  curator-worker --autoscale 8,2          # grow to 8 processes under load, shrink to 2
  curator-worker flower --port 5555       # Flower on this cluster (see flower --help)
\b
Any other option is passed to `celery worker` (see `celery worker --help`).""",
)
@click.option("-c", "--concurrency", type=int, help="Worker processes (default: CPU count).")
@click.option("-n", "--hostname", help="Node name, e.g. w1@%h (default: curator@<host>).")
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: CURATOR_QUEUE).")
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Log level.")
@click.option("--max-tasks-per-child", type=int, default=None,
              show_default=f"{DEFAULT_MAX_TASKS_PER_CHILD} or CURATOR_MAX_TASKS_PER_CHILD",
              help="Replace a worker process after this many batches.")
@click.option("--max-memory-per-child",
              default=lambda: os.environ.get("CURATOR_MAX_MEMORY_PER_CHILD",
                                             DEFAULT_MAX_MEMORY_PER_CHILD),
              show_default=f"{DEFAULT_MAX_MEMORY_PER_CHILD} or CURATOR_MAX_MEMORY_PER_CHILD",
              help="Replace a worker process whose resident memory exceeds this after a batch "
                   "(KiB, or a size like 2GiB).")
@click.option("--broker", help="Broker URL (overrides CURATOR_BROKER_URL).")
@click.pass_context
def worker_command(
    ctx: click.Context,
    concurrency: int | None,
    hostname: str | None,
    queues: str | None,
    loglevel: str,
    max_tasks_per_child: int,
    max_memory_per_child: str,
    broker: str | None,
) -> None:
    """Start a curator worker node on the cluster of CURATOR_BROKER_URL."""
    if broker:
        os.environ["CURATOR_BROKER_URL"] = broker
    settings = check_environment()
    settings.require_cluster()
    if concurrency is not None and concurrency < 1:
        raise click.BadParameter("must be a positive integer", param_hint="--concurrency")
    if max_tasks_per_child is None:
        max_tasks_per_child = _env_count("CURATOR_MAX_TASKS_PER_CHILD",
                                         DEFAULT_MAX_TASKS_PER_CHILD)
    if max_tasks_per_child < 1:
        raise click.BadParameter("must be a positive integer", param_hint="--max-tasks-per-child")
    argv = ["worker", "--pool", "prefork", "--loglevel", loglevel]
    if settings.task_events:  # CURATOR_TASK_EVENTS=0 turns them off
        argv.append("--task-events")
    argv += ["--hostname", hostname or f"curator@{socket.gethostname()}"]
    argv += ["--queues", queues or settings.queue]
    argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
    memory = memory_kib(max_memory_per_child)
    if not 1024 <= memory <= 1024**4:
        raise ConfigurationError(
            f"Memory per worker process {max_memory_per_child!r} is out of range: give 1MiB "
            "to 1024GiB (--max-memory-per-child or CURATOR_MAX_MEMORY_PER_CHILD)."
        )
    argv += ["--max-memory-per-child", str(memory)]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    argv += list(ctx.args)
    click.echo(f"curator-worker: broker {redact_url(settings.broker_url)}", err=True)
    if not _wait_for_servers(settings):
        return
    from curator_worker.worker.app import app  # configured from the environment set above

    app.worker_main(argv)


@click.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  curator-worker flower                                  # http://127.0.0.1:5555
  CURATOR_FLOWER_BASIC_AUTH=admin:secret curator-worker flower --address 0.0.0.0
  curator-worker flower --enable-task-api                # allow apply/revoke/shutdown
\b
Credentials come only from CURATOR_FLOWER_BASIC_AUTH (user:password[,user2:pw2]); when set,
every path needs them. Without them Flower binds only loopback addresses. Other options go
to Flower as --name=value (see `celery flower --help`). Workers must run with task events on
(curator-worker does); tasks sent before Flower started are not shown.""",
)
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=5555, show_default=True, help="Port to listen on.")
@click.option("--broker", help="Broker URL (overrides CURATOR_BROKER_URL).")
@click.option("--enable-task-api", is_flag=True,
              help="Allow Flower's task-running and control API (apply, revoke, worker "
                   "shutdown...); off by default. Same as CURATOR_FLOWER_TASK_API=1.")
@click.pass_context
def flower_command(ctx: click.Context, address: str, port: int, broker: str | None,
                   enable_task_api: bool) -> None:
    """Start Flower on this cluster: live workers, tasks and queues.

    Basic auth comes from CURATOR_FLOWER_BASIC_AUTH (user:password[,user2:pw2]), passed to
    Flower through the environment. Without it Flower only serves loopback addresses. The
    task API (running, revoking tasks, controlling workers) is off unless turned on.
    """
    if broker:
        os.environ["CURATOR_BROKER_URL"] = broker
    settings = Settings.from_env()
    settings.require_cluster()
    flower_guard.parse_credentials(os.environ.get(flower_guard.AUTH_ENV, ""))  # fail early
    env = dict(os.environ)
    if enable_task_api:
        env[flower_guard.TASK_API_ENV] = "1"
    flower_guard.task_api_enabled(env)
    if "PYTHONPATH" in env:  # an empty entry would put the working directory on the path
        env["PYTHONPATH"] = os.pathsep.join(p for p in env["PYTHONPATH"].split(os.pathsep) if p)
    # -P: the working directory is not put on the import path.
    argv = [sys.executable, "-P", "-m", "curator_worker.flower_guard",
            f"--address={address}", f"--port={port}", *ctx.args]
    os.execve(sys.executable, argv, env)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``curator-worker`` (``curator-worker flower`` starts Flower)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command, name = worker_command, "curator-worker"
    if args[:1] == ["flower"]:
        command, name, args = flower_command, "curator-worker flower", args[1:]
    try:
        command.main(args, prog_name=name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except CuratorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
