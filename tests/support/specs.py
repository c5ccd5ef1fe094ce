"""Spec dicts for tests: synthetic source -> FieldStats -> a sink, in a given folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SOURCES = "curator_worker.components.sources"
FILTERS = "curator_worker.components.filters"
SINKS = "curator_worker.components.sinks"


def stats_spec(out: Path, count: int, *, fail_indices: str = "", chunk_size: int | None = None,
               seed: int = 11, size: int = 32) -> dict[str, Any]:
    """A stateful pipeline spec writing under ``out``."""
    source_params: dict[str, Any] = {"count": count, "seed": seed, "size": size}
    if fail_indices:
        source_params["fail_indices"] = fail_indices
    if chunk_size is None:
        sink = {"name": "NpzPerIndex", "module": SINKS,
                "params": {"output_dir": str(out / "arrays")}}
    else:
        sink = {"name": "NpzChunked", "module": SINKS,
                "params": {"output_dir": str(out / "chunks"), "chunk_size": chunk_size}}
    return {
        "version": 1,
        "metadata": {"created_utc": "2026-11-24T00:00:00Z"},
        "source": {"name": "SyntheticArrays", "module": SOURCES, "params": source_params},
        "filters": [{"name": "FieldStats", "module": FILTERS,
                     "params": {"output": str(out / "stats.json")}}],
        "sink": sink,
    }


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    """Write ``spec`` as YAML to ``path``."""
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
