"""Lease renewal of a running batch (the broker side is in tests/integration/test_lease.py)."""

from __future__ import annotations

import pytest

from curator_worker import lease
from curator_worker.store.keys import delivery_tags_key
from curator_worker.worker.lease import LeaseRenewal


class FakeBroker:
    def __init__(self, tags: dict[str, str], fail: bool = False) -> None:
        self.tags, self.fail = tags, fail
        self.lookups = 0
        self.renewed: list[tuple[str, str, bool]] = []

    def hget(self, key: str, field: str) -> bytes | None:
        self.lookups += 1
        if self.fail:
            raise ConnectionError("broker down")
        value = self.tags.get(f"{key}/{field}")
        return value.encode() if value is not None else None

    def zadd(self, key: str, mapping: dict[str, float], xx: bool = False) -> int:
        (tag,) = mapping
        self.renewed.append((key, tag, xx))
        return 0


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(lease.time, "monotonic", lambda: now[0])
    return now


def test_renews_every_quarter_of_the_timeout_after_an_index(clock: list[float]) -> None:
    broker = FakeBroker({f"{delivery_tags_key('j1')}/b000003": "tag-3"})
    renew = LeaseRenewal(broker, "j1", "b000003", visibility_timeout=40, index_key="unacked")
    clock[0] += 9.9
    renew()
    assert broker.renewed == [] and broker.lookups == 0, "not before 10 s"
    clock[0] += 0.2
    renew()
    clock[0] += 5
    renew()  # 5 s after the last renewal: not yet
    clock[0] += 5
    renew()
    assert broker.renewed == [("unacked", "tag-3", True)] * 2  # XX: never re-adds
    assert broker.lookups == 1, "the tag is read once"


def test_a_batch_without_a_recorded_tag_stops_trying(clock: list[float]) -> None:
    broker = FakeBroker({})
    renew = LeaseRenewal(broker, "j1", "b000000", visibility_timeout=4)
    for _ in range(3):
        clock[0] += 2
        renew()
    assert broker.lookups == 1 and broker.renewed == []


def test_a_broker_error_does_not_stop_the_batch_and_renewal_is_tried_again(
    clock: list[float],
) -> None:
    broker = FakeBroker({f"{delivery_tags_key('j1')}/b000000": "tag-0"}, fail=True)
    renew = LeaseRenewal(broker, "j1", "b000000", visibility_timeout=4)
    clock[0] += 2
    renew()  # logged, not raised
    assert broker.lookups == 1 and broker.renewed == []
    broker.fail = False
    clock[0] += 1.0
    renew()  # the broker is back: the next period (a quarter of 4 s) renews
    assert broker.lookups == 2
    assert [(tag, xx) for _, tag, xx in broker.renewed] == [("tag-0", True)]
