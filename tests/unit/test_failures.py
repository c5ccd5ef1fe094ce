"""Failure grouping and index ranges (``curator-jobs failures``, the dashboard)."""

from __future__ import annotations

import pytest

from curator_worker.contract.indices import parse_indices
from curator_worker.failures import format_ranges, group_failures, message_pattern


@pytest.mark.parametrize("indices, expected", [
    ([], ""),
    ([5], "5"),
    ([3, 4, 5, 6, 7, 12], "3-7,12"),
    ([12, 7, 6, 5, 4, 3, 3], "3-7,12"),
    ([0, 2, 4], "0,2,4"),
    ([1, 2, 4, 5, 9], "1-2,4-5,9"),
])
def test_format_ranges(indices, expected):
    assert format_ranges(indices) == expected


def test_ranges_read_back_by_indices_option():
    indices = [0, 1, 2, 10, 11, 50, 99]
    assert parse_indices(format_ranges(indices), 100) == indices


def test_message_pattern_ignores_numbers_and_addresses():
    assert message_pattern("bad row 17 in file part-0003.csv\ndetails") == (
        "bad row <n> in file part-<n>.csv")
    assert message_pattern("<Obj at 0x7f00aa> took 1.25 s") == "<Obj at <n>> took <n> s"
    assert message_pattern("") == ""


def _err(type_: str, message: str, **extra) -> dict:
    return {"type": type_, "message": message, "traceback": f"Traceback: {message}",
            "kind": "error", "host": "h1", **extra}


def test_group_failures_groups_by_type_and_pattern():
    failures = {
        9: _err("KeyError", "'temperature'"),
        3: _err("RuntimeError", "synthetic failure at index 3"),
        4: _err("RuntimeError", "synthetic failure at index 4", host="h2"),
        5: _err("RuntimeError", "synthetic failure at index 5"),
        10: _err("KeyError", "'temperature'"),
        11: _err("ValueError", "synthetic failure at index 11"),
        20: _err("IndexTimeout", "index 20 ran over 1 s", kind="timeout"),
    }
    groups = group_failures(failures)
    assert [(g.type, g.count, g.ranges) for g in groups] == [
        ("RuntimeError", 3, "3-5"), ("KeyError", 2, "9-10"), ("ValueError", 1, "11"),
        ("IndexTimeout", 1, "20")]
    runtime, key_error, value_error, timeout = groups
    assert runtime.message == "synthetic failure at index <n>", "messages differ: the pattern"
    assert key_error.message == "'temperature'", "one message: shown as is"
    assert value_error.message == "synthetic failure at index 11"
    assert runtime.hosts == ["h1", "h2"] and runtime.kinds == ["error"]
    assert timeout.kinds == ["timeout"]
    assert runtime.example == 3 and runtime.traceback == "Traceback: synthetic failure at index 3"
    as_json = runtime.as_dict()
    assert "traceback" not in as_json and as_json["indices"] == [3, 4, 5]
    assert runtime.as_dict(with_traceback=True)["traceback"].startswith("Traceback")


def test_group_failures_empty_and_missing_fields():
    assert group_failures({}) == []
    (group,) = group_failures({1: {}, 2: {"message": None}})
    assert (group.type, group.message, group.ranges, group.traceback) == ("Error", "", "1-2", "")
