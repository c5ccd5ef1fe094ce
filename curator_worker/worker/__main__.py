"""``python -m curator_worker.worker``: one prefork worker node of this project's app.

The node the embedded cluster starts (:func:`curator_worker.embedded.worker_command`), and
tests' and benchmarks' nodes: the same node as ``celery -A curator_worker.app worker``
with mingle and gossip off, started without Celery's command line
(:func:`curator_worker.compat.celery.run_worker_node`), which saves about a third of its
start-up. Configured from ``CURATOR_*`` like every worker; ``curator-worker`` is the
command for users (it waits for the servers and passes other options to Celery).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the node's options, run it until it stops; its exit code."""
    parser = argparse.ArgumentParser(prog="python -m curator_worker.worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, required=True, help="pool processes")
    parser.add_argument("--hostname", required=True, help="node name, e.g. name@host")
    parser.add_argument("--queues", required=True, help="comma-separated queue names")
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("--task-events", action="store_true", help="send task events")
    parser.add_argument("--max-tasks-per-child", type=int)
    parser.add_argument("--max-memory-per-child", type=int, help="KiB")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    from curator_worker.compat.celery import run_worker_node
    from curator_worker.worker.app import app

    options = {name: getattr(args, name) for name in ("max_tasks_per_child",
                                                      "max_memory_per_child")
               if getattr(args, name) is not None}
    return run_worker_node(app, concurrency=args.concurrency, hostname=args.hostname,
                           queues=[q for q in args.queues.split(",") if q],
                           loglevel=args.loglevel, task_events=args.task_events, **options)


if __name__ == "__main__":
    sys.exit(main())
