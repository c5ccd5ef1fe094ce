"""The benchmark workloads: real Source/Filter/Sink classes workers can import from specs.

``W_cpu`` (pure-Python CPU per item), ``W_tiny`` (no-op items: per-item overhead) and
``W_io`` (a sleep per item) are one pipeline, ``BenchItems -> Passthrough -> EchoSink``,
with different parameters. The sink writes no file: it returns one string per index,
``"<index>:<checksum>"``, so every runner's output can be checked against the sequential
run (same work done, same order).

Worker processes (Celery, Dask, loky) import this module by name, so the repository root
must be on their ``PYTHONPATH`` (the benchmark scripts set it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from curator_worker.contract.pipeline import Filter, Param, Pipeline, Sink, Source
from curator_worker.contract.spec import build_pipeline, pipeline_to_spec

#: Item counts and per-item costs of the three workloads (issue 5).
WORKLOADS: dict[str, dict[str, Any]] = {
    "W_cpu": {"count": 400, "cpu_ms": 20.0, "sleep_ms": 0.0},
    "W_tiny": {"count": 5000, "cpu_ms": 0.0, "sleep_ms": 0.0},
    "W_io": {"count": 400, "cpu_ms": 0.0, "sleep_ms": 20.0},
}


def spin(iterations: int, seed: int) -> int:
    """Pure-Python CPU work (holds the GIL): ``iterations`` rounds of integer arithmetic."""
    acc = seed
    for k in range(iterations):
        acc = (acc * 31 + k) % 1_000_003
    return acc


def calibrate(milliseconds: float, trials: int = 5) -> int:
    """Iterations of :func:`spin` that take about ``milliseconds`` on this machine."""
    probe = 200_000
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        spin(probe, 0)
        best = min(best, time.perf_counter() - start)
    return max(1, round(probe * milliseconds / 1000.0 / best))


class BenchItems(Source[int]):
    """``count`` indices; each spins ``iterations`` rounds and/or sleeps, then yields a checksum."""

    name = "BenchItems"
    description = "Benchmark items: pure-Python CPU work and/or a sleep per index"

    @classmethod
    def params(cls) -> list[Param]:
        """Parameters of a spec."""
        return [
            Param("count", "Number of indices", type=int, default=100),
            Param("iterations", "spin() rounds per index (CPU work)", type=int, default=0),
            Param("sleep_ms", "Milliseconds to sleep per index (I/O wait)", type=float,
                  default=0.0),
            Param("salt", "Changes the spec, not the work: a new salt is a spec workers "
                          "have never seen (a user's first job)", type=int, default=0),
        ]

    def __init__(self, count: int = 100, iterations: int = 0, sleep_ms: float = 0.0,
                 salt: int = 0) -> None:
        self.count = count
        self.iterations = iterations
        self.sleep_ms = sleep_ms
        self.salt = salt

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Iterator[int]:
        value = spin(self.iterations, index) if self.iterations else index
        if self.sleep_ms:
            time.sleep(self.sleep_ms / 1000.0)
        yield value


class Passthrough(Filter[int]):
    """Passes items on unchanged (a filter stage with no cost of its own)."""

    name = "Passthrough"
    description = "Pass items through unchanged"

    def __call__(self, items: Iterator[int]) -> Iterator[int]:
        yield from items


class EchoSink(Sink[int]):
    """Writes nothing; returns ``["<index>:<item>"]`` so outputs can be compared."""

    name = "EchoSink"
    description = "Return one string per item instead of writing files"

    def __call__(self, items: Iterator[int], index: int) -> list[str]:
        return [f"{index}:{item}" for item in items]


def make_pipeline(count: int, iterations: int = 0, sleep_ms: float = 0.0,
                  salt: int = 0) -> Pipeline:
    """``BenchItems -> Passthrough -> EchoSink``; ``salt`` gives the same work a new spec.

    Memory tracing (``tracemalloc``, physicsnemo-curator's default ``track_memory``) is off:
    it slows every Python line of the work, and the pools measured beside ours have none.
    Per-index timings (``track_metrics``) stay on, as a user gets them.
    """
    pipeline = (
        BenchItems(count=count, iterations=iterations, sleep_ms=sleep_ms, salt=salt)
        .filter(Passthrough())
        .write(EchoSink())
    )
    pipeline.track_memory = False
    return pipeline


def pipeline_spec_json(pipeline: Pipeline) -> str:
    """The spec of ``pipeline`` as JSON without its metadata (a stable cache key)."""
    spec = pipeline_to_spec(pipeline)
    spec.pop("metadata", None)
    return json.dumps(spec, sort_keys=True)


@lru_cache(maxsize=8)
def pipeline_from_json(spec_json: str) -> Pipeline:
    """The pipeline of a spec, built once per process."""
    return build_pipeline(json.loads(spec_json), "benchmark spec")


def run_item(spec_json: str, index: int) -> list[str]:
    """Run one index of the spec's pipeline (the task of pool and naive-Celery runners)."""
    return pipeline_from_json(spec_json).run_index(index)


def run_chunk(spec_json: str, indices: Sequence[int]) -> list[list[str]]:
    """Run several indices in order (the task of the chunked Dask runner)."""
    pipeline = pipeline_from_json(spec_json)
    return [pipeline.run_index(i) for i in indices]


def noop(_: Any = None) -> int:
    """A task that does nothing (warms up pools)."""
    return 0
