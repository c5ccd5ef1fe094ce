"""The dashboard's access rules, before any server starts."""

from __future__ import annotations

import pytest

from curator_worker.dashboard import DashboardConfig, is_loopback, parse_credentials
from curator_worker.errors import ConfigurationError


def test_parse_credentials():
    assert parse_credentials("") == {}
    assert parse_credentials("  ") == {}
    assert parse_credentials("admin:pw") == {"admin": "pw"}
    assert parse_credentials("admin:pw, ops:a:b") == {"admin": "pw", "ops": "a:b"}


@pytest.mark.parametrize("bad", ["admin", "admin:", ":pw", "admin:pw,", "admin:pw,ops"])
def test_parse_credentials_refuses_incomplete_entries_without_echoing_them(bad):
    with pytest.raises(ConfigurationError, match="user:password") as caught:
        parse_credentials(bad)
    assert "pw" not in str(caught.value).replace("password", "")


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("app.localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False),
    ("example.org", False),
])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_non_loopback_needs_credentials():
    DashboardConfig().check()
    DashboardConfig(address="0.0.0.0", credentials={"a": "b"}).check()
    with pytest.raises(ConfigurationError, match="CURATOR_DASHBOARD_BASIC_AUTH"):
        DashboardConfig(address="0.0.0.0").check()
