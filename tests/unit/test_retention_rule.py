"""The pure parts of retention: the cutoff, and whether an accepted id is older than it."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from shared.contracts.ids import uuid7
from shared.db.retention import Expired, cutoff, id_expired

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def at(when: dt.datetime) -> uuid.UUID:
    return uuid7(int(when.timestamp() * 1000))


def test_cutoff_is_whole_days_before_now() -> None:
    assert cutoff(NOW, 30) == dt.datetime(2026, 10, 29, 12, 0, tzinfo=dt.UTC)
    with pytest.raises(ValueError):
        cutoff(NOW, 0)


def test_an_id_accepted_before_the_cutoff_has_expired() -> None:
    assert id_expired(at(NOW - dt.timedelta(days=30, seconds=1)), NOW, 30)
    assert not id_expired(at(NOW - dt.timedelta(days=29, hours=23)), NOW, 30)


def test_no_retention_or_no_time_in_the_id_says_not_expired() -> None:
    old = at(NOW - dt.timedelta(days=400))
    assert not id_expired(old, NOW, 0)
    assert not id_expired(uuid.uuid4(), NOW, 1)  # not one of ours: no acceptance time in it
    assert not id_expired(uuid.uuid5(uuid.NAMESPACE_URL, "otlp"), NOW, 1)


def test_rounds_add_up() -> None:
    assert Expired(2, 3) + Expired(1, 0, skipped=True) == Expired(3, 3, skipped=True)
