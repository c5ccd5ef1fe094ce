"""The Celery baselines: a tiny separate app with default settings.

*Naive*: one task per item.

This is what a user gets by wrapping the per-index function in ``@app.task`` and sending a
``group`` of one task per item: default prefetching and acknowledgement, results in the
Redis result backend, ``GroupResult.get()`` to wait.

*Chord minimum* (``chord_min``): one task per worker process, each running its slice of the
items, in a ``chord`` with the same callback, task events on: the least any design built
on a Celery chord can cost for a job (no job store, no commits, no metrics).

*Tuned*: what a competent Celery user writes instead: ``naive_item.chunks(...)`` (Celery's
own chunking: one message per chunk of items) in a ``chord`` whose callback flattens the
chunks' results; its worker runs with ``--prefetch-multiplier 1`` so chunks spread evenly
over the processes. The app's settings stay Celery's defaults.

The broker (and result backend) URL comes from ``BENCH_NAIVE_BROKER``; without it the app
uses the in-memory transport, so it can never reach a Redis the benchmark did not start.

Worker: ``celery -A benchmarks.naive_celery worker`` with the repository root on
``PYTHONPATH`` (``benchmarks/compare.py`` starts it).
"""

from __future__ import annotations

import os

from celery import Celery

from benchmarks.workloads import run_chunk, run_item

BROKER = os.environ.get("BENCH_NAIVE_BROKER") or "memory://"

app = Celery(
    "bench_naive",
    broker=BROKER,
    backend=BROKER if BROKER.startswith("redis") else "cache+memory://",
)


@app.task(name="bench.naive_item")
def naive_item(spec_json: str, index: int) -> list[str]:
    """Run one index of the pipeline of ``spec_json`` (built once per process)."""
    return run_item(spec_json, index)


@app.task(name="bench.naive_chunk")
def naive_chunk(spec_json: str, indices: list[int]) -> list[list[str]]:
    """Run a slice of indices in order (the ``chord_min`` runner: one task per process)."""
    return run_chunk(spec_json, indices)


@app.task(name="bench.nothing")
def nothing(_: object = None) -> None:
    """A task that does nothing (``chord_min``'s empty chord: the latency of a chord)."""


@app.task(name="bench.flatten")
def flatten(chunks: list[list[list[str]]]) -> list[list[str]]:
    """The tuned runner's chord callback: chunk results in order, as one list."""
    return [paths for chunk in chunks for paths in chunk]
