"""Chaos on object storage: the child-kill scenario with the stateful output on ``s3://``.

The filter's shards go to attempt-unique keys on a real S3-compatible server (SeaweedFS,
started by the fixture of ``tests/integration/test_formats_s3.py``); gather merges only the
committed keys and removes every object under the job's shard prefix, so shards of
attempts killed after their upload but before their commit never count and never stay.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from curator_worker.store import SUCCEEDED
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.chaos.harness import (
    BATCH_SIZE,
    COUNT,
    JOB_TIMEOUT,
    ChaosCluster,
    ChildKiller,
    assert_exactly_once,
    audit_job,
    chaos_spec,
    clean_spec,
)
from tests.integration.test_formats_s3 import BUCKET, s3fs_client
from tests.support.s3 import S3Server

Report = Callable[..., None]


@pytest.mark.visibility_timeout(10)
def test_random_prefork_child_sigkilled_every_second_on_an_s3_job(
    chaos: ChaosCluster, out_dir: Path, chaos_report: Report, s3_server: S3Server,
) -> None:
    """SIGKILL a random pool process about every second; the stats object is on s3://."""
    fs = s3fs_client(s3_server)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    prefix = f"{BUCKET}/chaos-{random.SystemRandom().randrange(10**9)}"
    scratch = out_dir.parent / "scratch"  # the nodes' temp dir (local copies of shards)
    scratch.mkdir()
    nodes = chaos.start_nodes(2, extra_env={**s3_server.environ(), "TMPDIR": str(scratch)})
    spec = chaos_spec(out_dir)
    spec["filters"][0]["params"]["output"] = f"s3://{prefix}/stats.json"
    seed = random.SystemRandom().randrange(10**6)
    started = time.monotonic()
    job = submit_job(spec, chaos.settings, batch_size=BATCH_SIZE)
    with ChildKiller(chaos, nodes, seed=seed) as killer:
        wait_for_job(chaos.store, job.job_id, settings=chaos.settings, progress=False,
                     timeout=JOB_TIMEOUT)
    seconds = time.monotonic() - started
    left = sorted(fs.find(prefix))
    # the audit compares out/stats.json with a sequential run's: fetch the merged object
    (out_dir / "stats.json").write_bytes(fs.cat_file(f"{prefix}/stats.json"))
    reference = clean_spec(spec)
    reference["filters"][0]["params"]["output"] = str(out_dir / "unused.json")
    audit = audit_job(chaos.store, job.job_id, out_dir, reference, range(COUNT))
    chaos_report(faults_injected=f"{len(killer.kills)} child SIGKILLs", seed=seed,
                 seconds=round(seconds, 1), shard_objects_left=len(left) - 1, **audit.figures())
    assert len(killer.kills) >= 3, "the job ended before the chaos began"
    assert audit.redelivered_batches >= 1, "no kill hit a running batch"
    assert_exactly_once(audit, SUCCEEDED, killed_writers=True)
    assert left == [f"{prefix}/stats.json"], left[:10]
    # local copies of killed attempts' shards are removed by later batches and the gather
    assert [p.name for p in scratch.iterdir() if p.name.startswith("curator-")] == []
    committed = [s for r in chaos.store.commit_records(job.job_id).values()
                 for s in r["shards"].values()]
    assert len(committed) == COUNT // BATCH_SIZE
    assert all(s.startswith(f"s3://{prefix}/stats.json.shards/{job.job_id}/") for s in committed)
