"""Attacks on `curator-worker flower`, one test each, against the real process over HTTP.

Each test starts `curator-worker flower` on a free port against the test session's own Redis
and talks to it as a browser, a local user or a remote client would. Tests that only send
requests to a Flower with the default options share one per auth setting (``shared_flower``).
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from curator_worker.config import Settings
from curator_worker.embedded import free_port, stop_process
from tests.integration.test_celery_jobs import BIN
from tests.support.cluster import REPO

AUTH = "admin:s3cret-flower-pw"
#: Queue the task-API tests aim at: nothing consumes it, the test deletes it.
ATTACK_QUEUE = "flower-attack"


@dataclass
class Flower:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def request(self, method: str, path: str, auth: str | None = None,
                headers: dict[str, str] | None = None, body: bytes | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            sent = dict(headers or {})
            if auth is not None:
                sent["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, response.read()
        finally:
            conn.close()


def _env(cluster_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CURATOR_FLOWER_", "FLOWER_"))}
    return {**env, **cluster_env, "PYTHONPATH": str(REPO), **extra}


def _start(cluster_env: dict[str, str], folder: Path, started: list[Flower], *args: str,
           cwd: Path | None = None, auth: str | None = AUTH, **extra: str) -> Flower:
    """Start `curator-worker flower ARGS` (appended to ``started`` at once, for the caller to
    stop by pid) and wait until it answers /healthcheck; its log goes to ``folder``."""
    port = free_port()
    env = _env(cluster_env, **extra)
    if auth is not None:
        env["CURATOR_FLOWER_BASIC_AUTH"] = auth
    log = folder / f"flower-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "curator-worker"), "flower", "--port", str(port),
                                 *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=cwd or folder)
    flower = Flower(port, proc, log)
    started.append(flower)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if flower.request("GET", "/healthcheck", auth=auth)[0] == 200:
                return flower
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"Flower did not answer /healthcheck within 60 s:\n{log.read_text()}")


@pytest.fixture()
def start_flower(cluster_env: dict[str, str], tmp_path: Path) -> Iterator:
    started: list[Flower] = []

    def start(*args: str, cwd: Path | None = None, auth: str | None = AUTH,
              **extra: str) -> Flower:
        return _start(cluster_env, tmp_path, started, *args, cwd=cwd, auth=auth, **extra)

    try:
        yield start
    finally:
        for flower in started:
            stop_process(flower.proc, grace=10)


@pytest.fixture(scope="module")
def shared_flower(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[Callable[[str | None], Flower]]:
    """``shared(auth)``: a Flower with the default options, one per ``auth`` for the module,
    for tests that only send it requests (none reads its log or turns its task API on)."""
    folder = tmp_path_factory.mktemp("flower-shared")
    started: list[Flower] = []
    by_auth: dict[str | None, Flower] = {}

    def shared(auth: str | None) -> Flower:
        flower = by_auth.get(auth)
        if flower is None or flower.proc.poll() is not None:
            flower = by_auth[auth] = _start(cluster_env, folder, started, auth=auth)
        return flower

    try:
        yield shared
    finally:
        for flower in started:
            stop_process(flower.proc, grace=10)


def _refused(cluster_env: dict[str, str], *args: str, cwd: Path | None = None,
             **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `curator-worker flower ARGS` expecting it to refuse to start."""
    done = subprocess.run([str(BIN / "curator-worker"), "flower", "--port", str(free_port()),
                           *args], env=_env(cluster_env, **extra), capture_output=True,
                          text=True, timeout=60, cwd=cwd)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr
    return done


def _public_ipv4() -> str | None:
    """A non-loopback address of this machine, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture()
def attack_queue(cluster_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(cluster_settings.broker_url)
    client.delete(ATTACK_QUEUE)
    try:
        yield client
    finally:
        client.delete(ATTACK_QUEUE)
        client.close()


# -- every path behind auth --------------------------------------------------------------------

PATHS = ["/metrics", "/healthcheck", "/", "/api/workers", "/static/css/flower.css",
         "/no/such/page", "/api/task/async-apply/celery.backend_cleanup"]


def test_every_path_needs_credentials(shared_flower) -> None:
    flower = shared_flower(AUTH)
    for path in PATHS:
        for method in ("GET", "POST", "OPTIONS"):
            for auth in (None, "admin:wrong", "admin", AUTH + ",x", "admin:" + AUTH):
                status, headers, body = flower.request(method, path, auth=auth, body=b"")
                assert status == 401, (method, path, auth, status)
                assert headers.get("www-authenticate", "").startswith("Basic")
                assert b"flower_" not in body
    status, _, body = flower.request("GET", "/metrics", auth=AUTH)
    assert status == 200 and b"# HELP" in body
    status, _, body = flower.request("GET", "/healthcheck", auth=AUTH)
    assert status == 200 and body == b"OK"


# -- credentials never on a command line -------------------------------------------------------

def _process_tree(root: int) -> list[int]:
    pids = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == os.getpgid(root) or int(fields[1]) in pids:
                pids.append(int(entry.name))
    return sorted(set(pids))


def test_credentials_are_not_on_any_command_line(start_flower, cluster_settings) -> None:
    flower = start_flower()
    tree = _process_tree(flower.proc.pid)
    assert flower.proc.pid in tree
    password = AUTH.split(":", 1)[1].encode()
    broker_password = (cluster_settings.broker_url.split(":")[2].split("@")[0]).encode()
    for pid in tree:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert password not in cmdline, cmdline
        assert broker_password not in cmdline, cmdline
    assert b"-P" in Path(f"/proc/{flower.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert flower.request("GET", "/api/workers", auth=AUTH)[0] == 200, "auth still works"
    log = flower.log.read_text(errors="replace")
    assert password.decode() not in log and broker_password.decode() not in log


@pytest.mark.parametrize("args", [["--", "--basic-auth=admin:pw"], ["--", "--basic_auth=a:b"],
                                  ["--", "--auth=.*@example.com"]])
def test_credentials_on_the_command_line_are_refused(cluster_env, args) -> None:
    done = _refused(cluster_env, *args)
    assert "CURATOR_FLOWER_BASIC_AUTH" in done.stderr


# -- credentials must be user:password ----------------------------------------------------------

@pytest.mark.parametrize("value", ["admin:pw,guest", ":", "admin:", ":pw", "admin:pw,",
                                   "admin:pw,,x:y", "guest", "ad\nmin:pw"])
def test_malformed_credentials_are_refused(cluster_env, value: str) -> None:
    done = _refused(cluster_env, CURATOR_FLOWER_BASIC_AUTH=value)
    assert "CURATOR_FLOWER_BASIC_AUTH" in done.stderr and "user:password" in done.stderr
    assert "pw" not in done.stderr.replace("password", ""), "the credential is not shown"


def test_malformed_credentials_through_flower_variable_are_refused(cluster_env) -> None:
    done = _refused(cluster_env, FLOWER_BASIC_AUTH="admin:pw,guest")
    assert "user:password" in done.stderr


# -- no public address without auth ------------------------------------------------------------

PUBLIC_ROUTES = [
    ["--", "--address=0.0.0.0"],
    ["--address", "0.0.0.0"],
    ["--address=0.0.0.0"],
    ["--", "--address", "0.0.0.0"],
    ["--", "--port=0", "--address=0.0.0.0"],
    ["--address", "::"],
    ["--", "--address=::"],
    ["--address", ""],
    ["--address", "0"],
]


@pytest.mark.parametrize("args", PUBLIC_ROUTES, ids=lambda a: " ".join(a) or "empty")
def test_public_address_without_auth_is_refused(cluster_env, args: list[str]) -> None:
    done = _refused(cluster_env, *args)
    assert "CURATOR_FLOWER_BASIC_AUTH" in done.stderr or "Unexpected argument" in done.stderr


def test_public_address_of_this_host_without_auth_is_refused(cluster_env) -> None:
    address = _public_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    done = _refused(cluster_env, "--address", address)
    assert "CURATOR_FLOWER_BASIC_AUTH" in done.stderr


def _listens_publicly(port: int) -> bool:
    address = _public_ipv4()
    assert address is not None
    try:
        socket.create_connection((address, port), timeout=2).close()
    except OSError:
        return False
    return True


def test_address_from_environment_or_config_file_stays_private(start_flower, tmp_path) -> None:
    if _public_ipv4() is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    conf = tmp_path / "evil_conf.py"
    conf.write_text("address = '0.0.0.0'\n")
    for flower in (start_flower(auth=None, FLOWER_ADDRESS="0.0.0.0"),
                   start_flower(f"--conf={conf}", auth=None),
                   start_flower(auth=None, FLOWER_CONF=str(conf))):
        assert not _listens_publicly(flower.port)
        assert flower.request("GET", "/api/workers")[0] == 200


def test_public_address_with_auth_is_served(start_flower) -> None:
    if _public_ipv4() is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    flower = start_flower("--address", "0.0.0.0")
    assert _listens_publicly(flower.port)
    assert flower.request("GET", "/api/workers")[0] == 401


def test_rebound_host_name_is_refused_without_auth(shared_flower) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1."""
    flower = shared_flower(None)
    assert flower.request("GET", "/api/tasks")[0] == 200
    for host in ("evil.example", f"evil.example:{flower.port}", "192.0.2.1"):
        assert flower.request("GET", "/api/tasks", headers={"Host": host})[0] == 403
    assert flower.request("GET", "/api/tasks", headers={"Host": "localhost"})[0] == 200


# -- the task API is off unless turned on ------------------------------------------------------

TASK_API = [
    "/api/task/async-apply/celery.backend_cleanup",
    "/api/task/apply/celery.backend_cleanup",
    "/api/task/send-task/celery.backend_cleanup",
    "/api/task/revoke/0f0f0f0f-0000-0000-0000-000000000000",
    "/api/task/abort/0f0f0f0f-0000-0000-0000-000000000000",
    "/api/task/timeout/celery.backend_cleanup",
    "/api/task/rate-limit/celery.backend_cleanup",
    "/api/worker/shutdown/w1@test-host-a",
    "/api/worker/pool/restart/w1@test-host-a",
    "/api/worker/pool/grow/w1@test-host-a",
    "/api/worker/pool/shrink/w1@test-host-a",
    "/api/worker/pool/autoscale/w1@test-host-a",
    "/api/worker/queue/add-consumer/w1@test-host-a",
    "/api/worker/queue/cancel-consumer/w1@test-host-a",
]
APPLY_BODY = b'{"args": [], "queue": "' + ATTACK_QUEUE.encode() + b'"}'
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("auth", [AUTH, None], ids=["basic-auth", "loopback-no-auth"])
def test_task_api_is_off_by_default(shared_flower, attack_queue, auth) -> None:
    flower = shared_flower(auth)
    for path in TASK_API:
        status, _, body = flower.request("POST", path, auth=auth, headers=JSON,
                                         body=APPLY_BODY)
        assert status in (403, 404), (path, status, body)
    assert attack_queue.llen(ATTACK_QUEUE) == 0, "nothing was sent"


def test_task_api_variable_turns_it_on(start_flower, attack_queue) -> None:
    flower = start_flower(CURATOR_FLOWER_TASK_API="1")
    status, _, body = flower.request("POST", TASK_API[0], auth=AUTH, headers=JSON,
                                     body=APPLY_BODY)
    assert status == 200, body
    assert attack_queue.llen(ATTACK_QUEUE) == 1


def test_bad_task_api_variable_is_refused(cluster_env) -> None:
    done = _refused(cluster_env, CURATOR_FLOWER_TASK_API="maybe")
    assert "CURATOR_FLOWER_TASK_API" in done.stderr


# -- cross-site requests -------------------------------------------------------------------------

CROSS_SITE = [
    {"Origin": "http://evil.example", **JSON},
    {"Origin": "null", **JSON},
    {"Referer": "http://evil.example/page", **JSON},
    {"Sec-Fetch-Site": "cross-site", **JSON},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:1", **JSON},
    # a simple HTML form POST (no preflight): text/plain body that parses as JSON
    {"Origin": "http://evil.example", "Content-Type": "text/plain"},
    {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
]


@pytest.mark.parametrize("auth", [None, AUTH], ids=["loopback-no-auth", "basic-auth"])
def test_cross_site_posts_are_refused(start_flower, attack_queue, auth) -> None:
    flower = start_flower("--enable-task-api", auth=auth)
    for headers in CROSS_SITE:
        status, _, body = flower.request("POST", TASK_API[0], auth=auth, headers=headers,
                                         body=APPLY_BODY)
        assert status == 403, (headers, status, body)
    assert attack_queue.llen(ATTACK_QUEUE) == 0, "no cross-site request sent a task"
    same_origin = {"Origin": f"http://127.0.0.1:{flower.port}", "Sec-Fetch-Site": "same-origin",
                   **JSON}
    status, _, body = flower.request("POST", TASK_API[0], auth=auth, headers=same_origin,
                                     body=APPLY_BODY)
    assert status == 200, body
    assert attack_queue.llen(ATTACK_QUEUE) == 1, "the same-origin request went through"


def test_no_cors_headers_open_the_api_to_other_sites(shared_flower) -> None:
    flower = shared_flower(None)
    for method in ("GET", "OPTIONS"):
        status, headers, _ = flower.request(method, "/api/tasks",
                                            headers={"Origin": "http://evil.example"})
        assert status in (200, 204)
        assert not any(h.lower().startswith("access-control-") for h in headers), headers
        assert headers.get("x-frame-options") == "DENY"


# -- the working directory is not on the import path --------------------------------------------

def test_modules_and_config_in_working_directory_are_not_run(start_flower, tmp_path) -> None:
    cwd = tmp_path / "untrusted"
    cwd.mkdir()
    marker = tmp_path / "pwned"
    for name in ("kombu.py", "tornado.py", "flower.py", "prometheus_client.py",
                 "flowerconfig.py", "humanize.py"):
        (cwd / name).write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
    flower = start_flower(auth=None, cwd=cwd,
                          PYTHONPATH=f"{REPO}{os.pathsep}")  # empty entry: the cwd
    assert flower.request("GET", "/metrics")[0] == 200
    assert not marker.exists(), marker.read_text()


def test_loopback_host_name_and_private_unix_socket_are_served(start_flower, cluster_env,
                                                               tmp_path) -> None:
    flower = start_flower("--address", "localhost", auth=None)
    assert flower.request("GET", "/healthcheck")[0] == 200

    path = tmp_path / "flower.sock"
    proc = subprocess.Popen([str(BIN / "curator-worker"), "flower", "--", f"--unix-socket={path}"],
                            env=_env(cluster_env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert path.stat().st_mode & 0o777 == 0o600, "only this user may connect"
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(15)
            raw.connect(str(path))
            raw.sendall(b"GET /healthcheck HTTP/1.0\r\nHost: localhost\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        stop_process(proc, grace=10)


def test_worker_does_not_import_modules_from_working_directory(cluster_env, tmp_path) -> None:
    """The same risk for `curator-worker` itself (Celery imports task modules 'from cwd')."""
    cwd = tmp_path / "untrusted"
    cwd.mkdir()
    marker = tmp_path / "pwned"
    for name in ("kombu.py", "billiard.py", "celeryconfig.py", "numpy.py", "redis.py",
                 "yaml.py", "click.py", "curator_worker.py"):
        (cwd / name).write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "curator-worker"), "-c", "1", "-Q", ATTACK_QUEUE,
                                 "-n", "cwd-check@test"], env=_env(cluster_env), cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "cwd-check@test ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        stop_process(proc, grace=10)
    assert not marker.exists(), marker.read_text()
