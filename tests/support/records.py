"""Record data for the JSONL/Parquet component tests: seeded corpora and JSONL files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> bytes:
    """Write records as compact JSON lines (the sinks' own format); return the bytes."""
    data = b"".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for r in records
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def corpus(n_files: int, per_file: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """Records with repeated texts (exact duplicates across files), ints, floats and lists."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "délta", "ε", "zeta 😀"]
    files = []
    for f in range(n_files):
        records = []
        for r in range(per_file):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
            records.append({"id": f * 1000 + r, "text": text, "score": rng.random(),
                            "tags": [rng.choice(words) for _ in range(2)]})
        files.append(records)
    return files
