"""The pure parts of ingest_api.enqueue: the broker-health state machine, reading a record's trace
id back, the 503's Retry-After. No I/O."""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec

from ingest_api.enqueue import KAFKA_RETRY_AFTER_SECONDS, BrokerHealth, trace_id_of, unavailable
from shared.contracts.envelope import Hints, RawEnvelope, encode


def test_down_until_the_first_success_then_up() -> None:
    health = BrokerHealth()
    assert not health.up
    assert health.probe_due(0.0, 1.0)
    assert health.succeeded(10.0) is True  # marks it up
    assert health.up
    assert health.succeeded(11.0) is False  # already up: no transition


def test_a_failure_marks_it_down_and_a_success_up_again() -> None:
    health = BrokerHealth()
    health.succeeded(10.0)
    assert health.failed(10.5, 12.5) is True
    assert not health.up
    assert health.failed(12.0, 14.0) is False  # already down
    assert health.succeeded(13.0) is True
    assert health.up


def test_a_failure_of_an_attempt_older_than_the_last_success_is_stale() -> None:
    """A send that began before the broker last answered says nothing about it now: a slow send
    among quick ones, or one from before a restart, must not mark a working broker down."""
    health = BrokerHealth()
    health.succeeded(10.0)
    health.failed(10.5, 15.5)  # a send that began at 10.5 timed out
    health.succeeded(20.0)  # the probe: back up
    assert health.failed(16.0, 21.0) is False  # began at 16 while it was away, timed out at 21
    assert health.up
    assert health.failed(20.5, 25.5) is True  # one that began after the last success counts


def test_probes_are_due_while_down_and_while_up_only_when_no_success_is_recent() -> None:
    health = BrokerHealth()
    health.succeeded(10.0)
    assert not health.probe_due(10.5, 1.0)  # a send succeeded half a second ago: no need
    assert health.probe_due(11.0, 1.0)
    health.failed(11.0, 11.0)
    assert health.probe_due(11.1, 1.0)  # down: probe every time


def test_a_late_success_while_down_brings_it_back() -> None:
    health = BrokerHealth()
    health.succeeded(1.0)
    health.failed(2.0, 7.0)
    assert health.succeeded(9.0) is True  # a late ack proves the broker answers


def test_how_long_it_has_been_down() -> None:
    health = BrokerHealth()
    assert health.down_for(5.0) == 0.0  # never up, never known down: starting, not an outage
    health.succeeded(1.0)
    assert health.down_for(5.0) == 0.0
    health.failed(2.0, 7.0)
    assert health.down_for(10.0) == 3.0
    health.succeeded(11.0)
    assert health.down_for(12.0) == 0.0


def test_trace_id_of_reads_the_envelope_id_back_from_the_record() -> None:
    envelope = RawEnvelope(
        trace_id=uuid.uuid4(),
        received_at=dt.datetime.now(dt.UTC),
        project_id=uuid.uuid4(),
        key_id=uuid.uuid4(),
        key_restricted=False,
        key_scope=[],
        external_id=None,
        shape="data",
        platform_id=None,
        hints=Hints(),
        body=msgspec.Raw(b'{"data": {"trace_id": "not this one"}}'),
    )
    assert trace_id_of(encode(envelope)) == envelope.trace_id


def test_a_kafka_503_says_when_to_retry() -> None:
    error = unavailable("Kafka is unreachable right now")
    assert error.status == 503 and error.code == "SERVICE_UNAVAILABLE"
    assert error.headers == {"Retry-After": str(KAFKA_RETRY_AFTER_SECONDS)}
