"""Many hosts, tested: Redis in one network namespace, worker nodes in two others with
their own host names. Mid-job one worker host is cut off the network; the batches it had
reserved are redelivered to the other host after the visibility timeout and the job
completes exactly once."""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from curator_worker.config import Settings
from curator_worker.embedded import redis_server_binary
from curator_worker.messaging import create_app
from curator_worker.store import SUCCEEDED, JobStore
from producer.submit import submit_job
from tests.deploy.conftest import base_env, sequential_stats, unique
from tests.deploy.netns import NetLab, unavailable_reason
from tests.support.cluster import REPO
from tests.support.specs import stats_spec

VISIBILITY_TIMEOUT = 5
REDIS_PORT = 6379  # inside the Redis host's own namespace: no clash with the machine's
SUBNET_A, SUBNET_B = "10.213.1", "10.213.2"  # private test range, only inside our namespaces
COUNT, BATCH_SIZE, SLEEP_MS = 40, 2, 400  # 20 batches of 0.8 s each
#: Seconds a redelivery may lag the visibility timeout: kombu's restore sweep runs every
#: few seconds with config.py's transport options (every ~100 s with kombu's defaults).
RESTORE_SLACK = 20
T = TypeVar("T")


@pytest.fixture()
def netlab() -> Iterator[NetLab]:
    """A private network lab; skips where namespaces cannot be created."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the many-host test needs network namespaces (root, iproute2): {reason}")
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()


def _wait_for(predicate: Callable[[], T], timeout: float, what: str, poll: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def test_cut_host_batches_are_redelivered_and_job_completes_exactly_once(
        netlab: NetLab, tmp_path: Path) -> None:
    shared = tmp_path / "shared"  # the storage every host sees
    shared.mkdir()
    # a short path: the control socket's path must fit in 107 bytes
    redis_dir = Path(tempfile.mkdtemp(prefix="cwt-redis-"))
    password = secrets.token_hex(16)
    queue = unique("multihost")
    try:
        # -- the network: hosts r (Redis), a and b (workers), one link from each worker
        r, a, b = netlab.host("r"), netlab.host("a"), netlab.host("b")
        netlab.link(r, "to-a", f"{SUBNET_A}.1/24", a, "eth0", f"{SUBNET_A}.2/24")
        netlab.link(r, "to-b", f"{SUBNET_B}.1/24", b, "eth0", f"{SUBNET_B}.2/24")

        # -- Redis on host r. The test itself (the producer and observer) is on none of the
        # hosts: it talks to Redis through a Unix socket, which no network cut affects.
        sock = redis_dir / "redis.sock"
        conf = redis_dir / "redis.conf"
        conf.write_text(
            f"bind {SUBNET_A}.1 {SUBNET_B}.1\nport {REDIS_PORT}\nprotected-mode yes\n"
            f"requirepass {password}\nunixsocket {sock}\nunixsocketperm 700\n"
            f'dir {redis_dir}\nsave ""\nappendonly no\nlogfile {redis_dir / "redis.log"}\n'
        )
        conf.chmod(0o600)
        netlab.popen(r, "redis-host", [redis_server_binary(), str(conf)], base_env(),
                     tmp_path / "redis.out", tmp_path)
        control = Settings(broker_url=f"redis+socket://:{password}@{sock}",
                           job_store_url=f"unix://:{password}@{sock}", queue=queue,
                           visibility_timeout=VISIBILITY_TIMEOUT)

        def redis_up() -> bool:
            try:
                return bool(redis.Redis(unix_socket_path=str(sock), password=password,
                                        socket_timeout=1).ping())
            except (redis.RedisError, OSError):
                return False

        _wait_for(redis_up, 15, "Redis on host r")
        store = JobStore.from_url(control.effective_job_store_url)

        # -- one worker node per host: curator-worker, named curator@<host name>
        workers = {}
        for ns, host, subnet in ((a, "host-a", SUBNET_A), (b, "host-b", SUBNET_B)):
            env = base_env({
                "CURATOR_BROKER_URL": f"redis://:{password}@{subnet}.1:{REDIS_PORT}/0",
                "CURATOR_QUEUE": queue,
                "CURATOR_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            })
            argv = [sys.executable, "-m", "curator_worker.worker.cli", "--concurrency", "2",
                    "--loglevel", "INFO", "--without-mingle", "--without-gossip"]
            workers[host] = netlab.popen(ns, host, argv, env, tmp_path / f"{host}.log", REPO)
        node_a, node_b = "curator@host-a", "curator@host-b"
        app = create_app(control)
        try:
            def nodes_up() -> bool:
                for host, proc in workers.items():
                    if proc.poll() is not None:
                        pytest.fail(f"{host} exited:\n{_tail(tmp_path / f'{host}.log')}")
                replies = app.control.ping(destination=[node_a, node_b], timeout=0.5) or []
                return {n for reply in replies for n in reply} >= {node_a, node_b}

            _wait_for(nodes_up, 60, "both worker nodes", poll=0.2)
        finally:
            app.close()

        # -- a stateful job with slow batches
        spec = stats_spec(shared / "out", COUNT, size=16)
        spec["source"]["params"]["sleep_ms"] = SLEEP_MS
        job = submit_job(spec, control, batch_size=BATCH_SIZE)
        submitted = time.monotonic()
        assert job.n_batches == COUNT // BATCH_SIZE

        def keys(part: str) -> set[str]:
            return {k.decode() for k in store.client.hkeys(store.key(job.job_id, part))}

        def both_hosts_busy() -> set[str] | None:
            """When host a has committed a batch and all four processes are running one,
            the batches begun but not committed (two of them on host a)."""
            commits = store.commit_records(job.job_id)
            if node_a not in {c["node"] for c in commits.values()}:
                return None
            running = keys("attempts") - set(commits)
            return running if len(running) == 4 else None

        running_at_cut = _wait_for(both_hosts_busy, 60, "both hosts running batches", 0.02)
        netlab.cut(a, "eth0")
        cut_at = time.monotonic()
        committed_by_a_at_cut = {k for k, c in store.commit_records(job.job_id).items()
                                 if c["node"] == node_a}

        # -- the job finishes on host b alone; note when each batch was first seen committed
        first_seen: dict[str, float] = {}

        def finished() -> bool:
            now = time.monotonic()
            for key in keys("committed"):
                first_seen.setdefault(key, now)
            return store.status(job.job_id).is_final

        _wait_for(finished, 60, f"job {job.job_id} to finish on host b", poll=0.1)
        status = store.status(job.job_id)
        assert status.state == SUCCEEDED, store.failures(job.job_id)
        assert (status.done, status.failed, status.total) == (COUNT, 0, COUNT)
        assert status.committed_batches == job.n_batches

        # exactly once: every planned batch committed once, every index once
        commits = store.commit_records(job.job_id)
        batches = store.batches(job.job_id)
        assert set(commits) == set(batches)
        assert sorted(i for idx in batches.values() for i in idx) == list(range(COUNT))
        results = store.results(job.job_id, list(range(COUNT)))
        assert all(r is not None and "paths" in r for r in results)
        assert len(list((shared / "out" / "arrays").glob("*.npz"))) == COUNT
        merged = (shared / "out" / "stats.json").read_bytes()
        assert json.loads(merged)["items"] == COUNT
        assert merged == sequential_stats(tmp_path / "seq", spec)
        assert not (shared / "out" / "stats.json.shards").exists()

        # the cut host's batches went to host b, only after the visibility timeout
        attempts = {k.decode(): int(v) for k, v in
                    store.client.hgetall(store.key(job.job_id, "attempts")).items()}
        redelivered = {k for k, n in attempts.items() if n > 1}
        assert len(redelivered) >= 1, "host a's reserved batches were redelivered"
        assert redelivered <= running_at_cut, "only batches that were running at the cut"
        for key in redelivered:
            assert commits[key]["node"] == node_b and commits[key]["host"] == "host-b"
            assert commits[key]["attempt"] == attempts[key] >= 2
            assert first_seen[key] - submitted >= VISIBILITY_TIMEOUT, \
                "redelivered before the visibility timeout"
            assert first_seen[key] - cut_at < VISIBILITY_TIMEOUT + RESTORE_SLACK, \
                "redelivered soon after the visibility timeout (kombu's sweep is tuned)"
        committed_by_a = {k for k, c in commits.items() if c["node"] == node_a}
        assert committed_by_a == committed_by_a_at_cut, "nothing committed by a after the cut"
        assert all(c["host"] == "host-a" for k, c in commits.items() if k in committed_by_a)
        assert cut_at - submitted < VISIBILITY_TIMEOUT, "the cut happened mid-job"
    finally:
        netlab.close()
        shutil.rmtree(redis_dir, ignore_errors=True)


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""
