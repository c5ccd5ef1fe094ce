"""``curator-jobs dashboard`` and ``curator-jobs failures`` on the test cluster.

The dashboard runs as a user starts it (the console script, in a subprocess) and is read
as a browser and Prometheus read it: its JSON API, ``/metrics`` and, where Debian's
``chromium`` is installed, the rendered page in headless Chromium, during and after a
real job on the two worker nodes of ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from curator_worker.embedded import free_port, stop_process
from curator_worker.policy import BatchPolicy
from producer.submit import submit_job
from producer.wait import wait_for_job
from tests.integration.test_celery_jobs import BIN, cli
from tests.support.cluster import REPO
from tests.support.specs import stats_spec

pytestmark = pytest.mark.usefixtures("worker_nodes")

AUTH = "admin:s3cret-pw,ops:an:other"
CHROMIUM = "/usr/bin/chromium"


def request(url: str, auth: str | None = None, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of one HTTP request; errors are answers, not exceptions.

    Header names are lower-cased."""
    req = urllib.request.Request(url, method=method, headers=headers or {},
                                 data=b"x=1" if method == "POST" else None)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read().decode(), _lower(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), _lower(exc.headers)


def _lower(headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def get_json(url: str, auth: str | None = None) -> dict:
    code, body, _ = request(url, auth)
    assert code == 200, (code, body)
    return json.loads(body)


def metrics(base: str, auth: str | None = None) -> dict[tuple[str, tuple], float]:
    """``/metrics`` parsed: (sample name, sorted labels) -> value; checks the type names."""
    code, body, headers = request(f"{base}/metrics", auth)
    assert code == 200 and headers["content-type"].startswith("text/plain"), (code, body)
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(body):
        assert family.name.startswith("curator_job"), family.name
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def start_dashboard(env: dict[str, str], log_path: Path, *args: str
                    ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(BIN / "curator-jobs"), "dashboard", "--port", str(port), *args],
                            env={**os.environ, **env, "PYTHONPATH": str(REPO)}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    log.close()
    base = f"http://127.0.0.1:{port}"
    auth = env.get("CURATOR_DASHBOARD_BASIC_AUTH", "").split(",")[0] or None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard exited: {log_path.read_text()}")
        try:
            if request(f"{base}/healthz", auth)[0] == 200:
                return proc, base
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    stop_process(proc)
    pytest.fail(f"the dashboard did not answer within 30 s: {log_path.read_text()}")


@pytest.fixture(scope="module")
def dashboard(cluster_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
              ) -> Iterator[str]:
    """The dashboard on 127.0.0.1 without auth; yields its base URL (one for the module:
    it only reads the job store, which every test writes jobs of its own to)."""
    env = {k: v for k, v in cluster_env.items()}
    env["CURATOR_DASHBOARD_BASIC_AUTH"] = ""
    proc, base = start_dashboard(env, tmp_path_factory.mktemp("dashboard") / "dashboard.log")
    try:
        yield base
    finally:
        stop_process(proc, grace=10)


def chromium_dom(url: str, tmp: Path, budget_ms: int = 4000) -> str:
    """The page at ``url`` as headless Chromium renders it after ``budget_ms`` of scripts."""
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={profile}",
         f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def by_id(dom: str, element_id: str) -> str:
    """The text of the leaf element with ``element_id`` in a dumped DOM."""
    found = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', dom)
    assert found, f"no element #{element_id} in the page"
    return found.group(1)


def hanging_spec(tmp: Path, count: int, hang: int, hang_s: float, fail: str,
                 release: Path | None = None) -> dict:
    spec = stats_spec(tmp, count, fail_indices=fail)
    spec["source"]["name"] = "HangingArrays"
    spec["source"]["module"] = "tests.support.faulty"
    spec["source"]["params"].update(hang=str(hang), hang_s=hang_s)
    if release is not None:  # the hang ends when this file appears (at most hang_s)
        spec["source"]["params"]["release"] = str(release)
    return spec


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_dashboard_api_and_metrics_during_and_after_a_job(dashboard, store, cluster_settings,
                                                          tmp_path):
    # 40 indices in batches of 4; 3,4,5,20 fail; index 39 hangs (up to 20 s) until the
    # checks below are done, so the last batch runs after the nine others are committed
    release = tmp_path / "release-hang"
    spec = hanging_spec(tmp_path, 40, hang=39, hang_s=20.0, fail="3,4,5,20", release=release)
    job = submit_job(spec, cluster_settings, batch_size=4)
    job_url = f"{dashboard}/api/jobs/{job.job_id}"

    wait_until(lambda: store.status(job.job_id).committed_batches == 9, 60,
               "nine batches committed")
    during = get_json(job_url)
    assert during["state"] == "running"
    assert (during["done"], during["failed"], during["total"]) == (32, 4, 40)
    assert (during["committed_batches"], during["batches"]) == (9, 10)
    assert during["batches_in_flight"] == 1
    assert [c["name"] for c in during["pipeline"]] == ["HangingArrays", "FieldStats",
                                                       "NpzPerIndex"]
    assert during["pipeline"][0]["params"]["hang"] == "39"
    running = [lane for lane in during["lanes"] if lane["running_since"] is not None]
    assert len(running) == 1, during["lanes"]
    assert {lane["node"] for lane in during["lanes"]} <= {"w1@test-host-a", "w2@test-host-b"}
    assert sum(lane["indices"] for lane in during["lanes"]) == 36
    assert during["stages"] and during["stages"][0]["stage"] == "source"
    assert during["nodes_live"] == 2
    (group,) = during["failure_groups"]
    assert (group["type"], group["count"], group["ranges"]) == ("RuntimeError", 4, "3-5,20")
    assert group["message"] == "synthetic failure at index <n>"
    assert "Traceback" in group["traceback"]

    listed = get_json(f"{dashboard}/api/jobs")["jobs"]
    assert listed[0]["job_id"] == job.job_id and listed[0]["state"] == "running"
    assert listed[0]["source"] == "HangingArrays"

    m = metrics(dashboard)
    j = ("job", job.job_id)
    assert m[("curator_job_info", (j, ("queue", cluster_settings.queue),
                                   ("source", "HangingArrays"), ("state", "running")))] == 1
    assert m[("curator_job_indices_total", (j, ("state", "done")))] == 32
    assert m[("curator_job_indices_total", (j, ("state", "failed")))] == 4
    assert m[("curator_job_indices_planned", (j,))] == 40
    assert m[("curator_job_batches_in_flight", (j,))] == 1
    assert m[("curator_job_batches_committed_total", (j,))] == 9
    assert m[("curator_job_stage_seconds_total", (j, ("stage", "source")))] > 0
    assert ("curator_job_finished_timestamp_seconds", (j,)) not in m

    release.touch()
    status = wait_for_job(store, job.job_id, settings=cluster_settings, progress=False,
                          timeout=120)
    assert status.state == "partial"
    after = get_json(job_url)
    assert after["state"] == "partial" and (after["done"], after["failed"]) == (36, 4)
    assert after["batches_in_flight"] == 0 and after["in_flight"] == 0
    assert all(lane["running_since"] is None for lane in after["lanes"])
    assert sum(lane["indices"] for lane in after["lanes"]) == 40
    m = metrics(dashboard)
    assert m[("curator_job_info", (j, ("queue", cluster_settings.queue),
                                   ("source", "HangingArrays"), ("state", "partial")))] == 1
    assert m[("curator_job_indices_total", (j, ("state", "done")))] == 36
    assert m[("curator_job_batches_in_flight", (j,))] == 0
    assert m[("curator_job_finished_timestamp_seconds", (j,))] == pytest.approx(
        status.finished, abs=0.01)

    code, body, _ = request(f"{dashboard}/api/jobs/20991231-000000-nosuchjb")
    assert code == 404 and "No job" in json.loads(body)["error"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="headless browser test needs Debian's chromium: apt-get install "
                           "-y chromium")
def test_page_in_a_real_browser_during_and_after_a_job(dashboard, store, cluster_settings,
                                                       tmp_path):
    spec = hanging_spec(tmp_path, 24, hang=23, hang_s=25.0, fail="2,9")
    job = submit_job(spec, cluster_settings, batch_size=4)
    wait_until(lambda: store.status(job.job_id).committed_batches == 5, 60,
               "five batches committed")
    page = f"{dashboard}/#job={job.job_id}"

    dom = chromium_dom(page, tmp_path)
    assert by_id(dom, "job-id") == job.job_id
    assert re.search(r'id="job-state"[^>]*>running<', dom)
    assert (by_id(dom, "count-done"), by_id(dom, "count-failed"),
            by_id(dom, "count-total")) == ("18", "2", "24")
    assert by_id(dom, "batches") == "5 of 6 committed"
    assert by_id(dom, "batches-in-flight") == "1"
    assert "synthetic failure at index &lt;n&gt;" in dom
    assert 'class="failure-indices">indices 2,9' in dom
    for name in ("HangingArrays", "FieldStats", "NpzPerIndex"):
        assert f'class="component-name">{name}<' in dom
    # drawn where it belongs: positions reach the DOM (the page's CSP blocks inline styles)
    assert re.search(r'class="lane-bar running" [^>]*style="left: [\d.]+%; width: [\d.]+%;',
                     dom), "the hung batch shows as running"
    assert len(re.findall(r'class="lane-bar" [^>]*style="left: [\d.]+%; width: [\d.]+%;',
                          dom)) == 5, "one bar per committed batch"
    assert f'data-job="{job.job_id}"' in dom, "the job is listed"

    wait_for_job(store, job.job_id, settings=cluster_settings, progress=False, timeout=120)
    dom = chromium_dom(page, tmp_path)
    assert re.search(r'id="job-state"[^>]*>partial<', dom)
    assert (by_id(dom, "count-done"), by_id(dom, "count-failed")) == ("22", "2")
    assert by_id(dom, "percent") == "100.0%"
    assert by_id(dom, "batches") == "6 of 6 committed"
    assert 'class="lane-bar running"' not in dom
    assert "Traceback (most recent call last)" in dom


def test_auth_required_everywhere_when_set(cluster_env, store, cluster_settings, tmp_path):
    env = {**cluster_env, "CURATOR_DASHBOARD_BASIC_AUTH": AUTH}
    proc, base = start_dashboard(env, tmp_path / "dashboard.log", "--address", "0.0.0.0")
    try:
        job = submit_job(stats_spec(tmp_path, 10), cluster_settings, batch_size=5)
        wait_for_job(store, job.job_id, settings=cluster_settings, progress=False, timeout=60)
        for path in ("/", "/static/dashboard.js", "/api/jobs", f"/api/jobs/{job.job_id}",
                     "/metrics", "/healthz", "/nope"):
            code, _, headers = request(base + path)
            assert code == 401, path
            assert headers.get("www-authenticate", "").startswith("Basic"), path
            assert request(base + path, auth="admin:wrong")[0] == 401, path
            assert request(base + path, auth="admin:")[0] == 401, path
        assert request(f"{base}/", auth="admin:s3cret-pw")[0] == 200
        assert request(f"{base}/", auth="ops:an:other")[0] == 200, "second user, ':' in pw"
        listed = get_json(f"{base}/api/jobs", auth="admin:s3cret-pw")["jobs"]
        assert job.job_id in [j["job_id"] for j in listed]
        code, body, _ = request(f"{base}/metrics", auth="ops:an:other")
        assert code == 200 and f'job="{job.job_id}"' in body
        # read-only: no method but GET/HEAD, even with credentials
        for method in ("POST", "PUT", "DELETE"):
            assert request(f"{base}/api/jobs", auth="admin:s3cret-pw", method=method)[0] == 405
        if Path(CHROMIUM).exists():  # a browser given the credentials in the URL
            port = base.rsplit(":", 1)[1]
            dom = chromium_dom(f"http://admin:s3cret-pw@127.0.0.1:{port}/", tmp_path)
            assert by_id(dom, "job-id") == job.job_id, by_id(dom, "connection")
            assert re.search(r'id="job-state"[^>]*>succeeded<', dom)
            dom = chromium_dom(f"http://admin:wrong@127.0.0.1:{port}/", tmp_path)
            assert job.job_id not in dom
        log = (tmp_path / "dashboard.log").read_text()
        assert "s3cret-pw" not in log and "basic auth on" in log
        password = cluster_settings.broker_url.split(":")[2].split("@")[0]
        assert password not in log
    finally:
        stop_process(proc, grace=10)


def test_without_auth_loopback_only_and_no_cross_site(dashboard):
    assert request(f"{dashboard}/api/jobs")[0] == 200
    assert request(f"{dashboard}/api/jobs", method="POST")[0] == 405
    # a page of another site that rebinds its DNS name to 127.0.0.1
    assert request(f"{dashboard}/api/jobs", headers={"Host": "evil.example:80"})[0] == 403
    assert request(f"{dashboard}/api/jobs", headers={"Host": "localhost:1"})[0] == 200
    # a browser's cross-site fetch
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
    assert request(f"{dashboard}/api/jobs", headers=cross)[0] == 403
    code, _, headers = request(f"{dashboard}/")
    assert code == 200 and headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("args, auth, expected", [
    (["--address", "0.0.0.0"], "", "without authentication"),
    (["--address", "10.1.2.3"], None, "without authentication"),
    (["--address", "0.0.0.0"], "admin", "user:password"),
    ([], "admin:", "user:password"),
    ([], "admin:pw,:pw2", "user:password"),
])
def test_refuses_to_start_with_one_line(cluster_env, args, auth, expected):
    env = {**os.environ, **cluster_env, "PYTHONPATH": str(REPO)}
    env.pop("CURATOR_DASHBOARD_BASIC_AUTH", None)
    if auth is not None:
        env["CURATOR_DASHBOARD_BASIC_AUTH"] = auth
    done = subprocess.run([str(BIN / "curator-jobs"), "dashboard", *args], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert "CURATOR_DASHBOARD_BASIC_AUTH" in done.stderr and "Traceback" not in done.stderr
    if auth:
        assert "pw" not in done.stderr.replace("password", "")


def test_failures_command_groups_errors(store, cluster_settings, cluster_env, tmp_path):
    # five indices raise the same RuntimeError (message differs by the index), one times out
    spec = hanging_spec(tmp_path, 30, hang=12, hang_s=60.0, fail="3,4,5,7,21")
    options = BatchPolicy(index_timeout=1.0).as_options()
    job = submit_job(spec, cluster_settings, batch_size=10, options=options)
    status = wait_for_job(store, job.job_id, settings=cluster_settings, progress=False,
                          timeout=120)
    assert (status.state, status.failed) == ("partial", 6)

    done = cli(["curator-jobs", "failures", job.job_id], cluster_env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"job {job.job_id} (partial): 6 failed indices in 2 groups"
    assert "5 × RuntimeError: synthetic failure at index <n>" in lines
    assert "  indices: 3-5,7,21" in lines
    timeout = next(line for line in lines if "× IndexTimeout" in line)
    assert timeout.startswith("1 × IndexTimeout") and timeout.endswith("[timeout]")
    assert "  indices: 12" in lines
    assert lines.index("  indices: 3-5,7,21") < lines.index("  indices: 12"), "largest first"
    assert "Traceback" not in done.stdout

    done = cli(["curator-jobs", "failures", job.job_id, "--traceback"], cluster_env)
    assert done.returncode == 0
    assert done.stdout.count("Traceback (most recent call last)") == 2, "one per group"
    assert "  traceback of index 3:" in done.stdout

    data = json.loads(cli(["curator-jobs", "failures", job.job_id, "--json"],
                          cluster_env).stdout)
    assert (data["job_id"], data["state"], data["failed"]) == (job.job_id, "partial", 6)
    first, second = data["groups"]
    assert first == {"type": "RuntimeError", "message": "synthetic failure at index <n>",
                     "count": 5, "ranges": "3-5,7,21", "indices": [3, 4, 5, 7, 21],
                     "kinds": ["error"], "hosts": first["hosts"], "example": 3}
    assert first["hosts"] and "traceback" not in first
    assert (second["type"], second["indices"], second["kinds"]) == (
        "IndexTimeout", [12], ["timeout"])
    data = json.loads(cli(["curator-jobs", "failures", job.job_id, "--json", "--traceback"],
                          cluster_env).stdout)
    assert all("Traceback" in g["traceback"] for g in data["groups"])

    missing = cli(["curator-jobs", "failures", "20991231-000000-nosuchjb"], cluster_env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "No job" in missing.stderr


def test_failures_command_on_a_clean_job(store, cluster_settings, cluster_env, tmp_path):
    job = submit_job(stats_spec(tmp_path, 8), cluster_settings, batch_size=4)
    wait_for_job(store, job.job_id, settings=cluster_settings, progress=False, timeout=60)
    done = cli(["curator-jobs", "failures", job.job_id], cluster_env)
    assert done.returncode == 0
    assert done.stdout.strip() == f"job {job.job_id} (succeeded): no failed indices"
    data = json.loads(cli(["curator-jobs", "failures", job.job_id, "--json"],
                          cluster_env).stdout)
    assert data["groups"] == [] and data["failed"] == 0


def test_port_in_use_is_one_line(dashboard, cluster_env):
    port = dashboard.rsplit(":", 1)[1]
    env = {**os.environ, **cluster_env, "PYTHONPATH": str(REPO)}
    env.pop("CURATOR_DASHBOARD_BASIC_AUTH", None)
    done = subprocess.run([str(BIN / "curator-jobs"), "dashboard", "--port", port], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in done.stderr, done.stderr
    assert "--port" in done.stderr and "Traceback" not in done.stderr
