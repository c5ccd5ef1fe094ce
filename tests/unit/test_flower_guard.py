"""The request and credential rules of curator_worker.flower_guard, table-driven.

The real Flower process is attacked in tests/integration/test_flower_security.py; these
cases pin the rules themselves, including ones a test client cannot easily send.
"""

from __future__ import annotations

import base64

import pytest
from tornado.httputil import HTTPHeaders

from curator_worker.errors import ConfigurationError
from curator_worker.flower_guard import (
    check_request,
    is_loopback,
    parse_credentials,
    task_api_enabled,
)

CREDS = ["admin:pw", "ann:p:w"]
HOST = "127.0.0.1:5555"


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("value", ["admin:pw,guest", ":", "admin:", ":pw", "admin:pw,",
                                   ",admin:pw", "guest", "a\x00:pw", "a:p\tw"])
def test_bad_credentials(value: str) -> None:
    with pytest.raises(ConfigurationError, match="user:password") as err:
        parse_credentials(value)
    assert "pw" not in str(err.value).replace("password", "")


def test_good_credentials() -> None:
    assert parse_credentials("  admin:pw,ann:p:w\n") == CREDS
    assert parse_credentials("") == []


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("::ffff:127.0.0.1", True), ("localhost", True), ("LOCALHOST", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.0.2.2", False),
    ("localhost.evil.example", False), ("127.0.0.1.evil.example", False), ("fe80::1%eth0", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("method", "host", "headers", "creds", "task_api", "status"), [
    # credentials, on every method
    ("GET", HOST, {}, CREDS, False, 401),
    ("GET", HOST, {"Authorization": basic("admin:wrong")}, CREDS, False, 401),
    ("GET", HOST, {"Authorization": basic("admin")}, CREDS, False, 401),
    ("GET", HOST, {"Authorization": "Basic !!!"}, CREDS, False, 401),
    ("GET", HOST, {"Authorization": "Bearer admin:pw"}, CREDS, False, 401),
    ("OPTIONS", HOST, {}, CREDS, True, 401),
    ("GET", HOST, {"Authorization": basic("admin:pw")}, CREDS, False, None),
    ("GET", "evil.example", {"Authorization": basic("ann:p:w")}, CREDS, False, None),
    # no credentials: loopback Host only (DNS rebinding)
    ("GET", HOST, {}, [], False, None),
    ("GET", "localhost:5555", {}, [], False, None),
    ("GET", "[::1]:5555", {}, [], False, None),
    ("GET", "evil.example:5555", {}, [], False, 403),
    ("GET", "", {}, [], False, 403),
    # the task API is off unless turned on: every state-changing method
    ("POST", HOST, {}, [], False, 403),
    ("DELETE", HOST, {}, [], False, 403),
    ("PUT", HOST, {"Authorization": basic("admin:pw")}, CREDS, False, 403),
    ("POST", HOST, {}, [], True, None),
    # cross-site requests
    ("POST", HOST, {"Origin": "http://evil.example"}, [], True, 403),
    ("POST", HOST, {"Origin": "null"}, [], True, 403),
    ("POST", HOST, {"Origin": "http://127.0.0.1:5556"}, [], True, 403),
    ("POST", HOST, {"Origin": "http://127.0.0.1:5555@evil.example"}, [], True, 403),
    ("POST", HOST, {"Referer": "http://evil.example/x?127.0.0.1:5555"}, [], True, 403),
    ("POST", HOST, {"Sec-Fetch-Site": "cross-site"}, [], True, 403),
    ("POST", HOST, {"Sec-Fetch-Site": "same-site"}, [], True, 403),
    ("POST", HOST, {"Origin": "http://127.0.0.1:5555", "Sec-Fetch-Site": "same-origin"}, [],
     True, None),
    ("POST", HOST, {"Referer": "http://127.0.0.1:5555/tasks"}, [], True, None),
    ("POST", HOST, {"Origin": "http://evil.example", "Authorization": basic("admin:pw")},
     CREDS, True, 403),
])
def test_check_request(method, host, headers, creds, task_api, status) -> None:
    refusal = check_request(method, host, HTTPHeaders(headers), creds, task_api)
    assert (refusal and refusal[0]) == status, refusal


@pytest.mark.parametrize(("value", "enabled"), [("", False), ("0", False), ("off", False),
                                                ("1", True), ("TRUE", True), (" yes ", True)])
def test_task_api_variable(value: str, enabled: bool) -> None:
    assert task_api_enabled({"CURATOR_FLOWER_TASK_API": value}) is enabled


def test_bad_task_api_variable() -> None:
    with pytest.raises(ConfigurationError, match="CURATOR_FLOWER_TASK_API"):
        task_api_enabled({"CURATOR_FLOWER_TASK_API": "maybe"})
