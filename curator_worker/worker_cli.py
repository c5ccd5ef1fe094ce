"""``curator-worker``: a Celery worker of this project's app with safe defaults.

Prefork pool, task events on (Flower sees tasks), late acknowledgement and one task per
process at a time (from the app's settings). Options it does not know are passed on to
``celery worker`` unchanged.
"""

from __future__ import annotations

import os
import socket
import sys

import click

from curator_worker.config import Settings, redact_url
from curator_worker.errors import CuratorError


@click.command(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "max_content_width": 100,
    },
    epilog="""\b
Examples:
  CURATOR_BROKER_URL=redis://host:6379/0 curator-worker --concurrency 8
  curator-worker -c 4 -n gpu1@%h -Q curator,big --max-tasks-per-child 100
\b
Any other option is passed to `celery worker` (see `celery worker --help`).""",
)
@click.option("-c", "--concurrency", type=int, help="Worker processes (default: CPU count).")
@click.option("-n", "--hostname", help="Node name, e.g. w1@%h (default: curator@<host>).")
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: CURATOR_QUEUE).")
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Log level.")
@click.option("--broker", help="Broker URL (overrides CURATOR_BROKER_URL).")
@click.pass_context
def worker_command(
    ctx: click.Context,
    concurrency: int | None,
    hostname: str | None,
    queues: str | None,
    loglevel: str,
    broker: str | None,
) -> None:
    """Start a curator worker node on the cluster of CURATOR_BROKER_URL."""
    if broker:
        os.environ["CURATOR_BROKER_URL"] = broker
    settings = Settings.from_env()
    settings.require_cluster()
    if concurrency is not None and concurrency < 1:
        raise click.BadParameter("must be a positive integer", param_hint="--concurrency")
    argv = ["worker", "--pool", "prefork", "--task-events", "--loglevel", loglevel]
    argv += ["--hostname", hostname or f"curator@{socket.gethostname()}"]
    argv += ["--queues", queues or settings.queue]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    argv += list(ctx.args)
    click.echo(f"curator-worker: broker {redact_url(settings.broker_url)}", err=True)
    from curator_worker.app import app  # configured from the environment set above

    app.worker_main(argv)


def main() -> None:
    """Entry point of ``curator-worker``."""
    try:
        worker_command.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except CuratorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
