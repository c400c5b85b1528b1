"""The storage worker's pure parts: decoding routed records into rows, the upsert collapse rule,
classifying conflicts, the last-used tracker, and dead-letter headers. No I/O."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import pytest

from shared.contracts import dlq
from shared.contracts.envelope import encode
from shared.devstack.pipeline import Tenant
from storage_worker.dead_letters import letter, rejected
from storage_worker.last_used import LastUsedTracker
from storage_worker.rows import Invalid, Pending, decode_record, decode_records
from storage_worker.upsert import StoredVersion, classify_conflicts, collapse, identity
from tests.storage_helpers import body, consumer_record, routed_envelope

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


@pytest.fixture
def tenant() -> Tenant:
    """An in-memory tenant (the session's real one lives in the database; these tests need none)."""
    t = Tenant(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "wf", "cf")
    t.key_ids = {"all": uuid.uuid4(), "n8n": uuid.uuid4(), "two": uuid.uuid4()}
    return t


def pending(tenant: Tenant, offset: int = 0, **kwargs: Any) -> Pending:
    decoded = decode_record(consumer_record(encode(routed_envelope(tenant, **kwargs)), offset=offset))
    assert isinstance(decoded, Pending), decoded
    return decoded


# -- decoding ------------------------------------------------------------------------------------


def test_routed_record_becomes_a_row_with_the_body_unchanged(tenant: Tenant) -> None:
    raw_body = b'{"data": {"input": "hi"}, "metadata": {"workflowId": "wf-1", "n": [1, 2]},\n "externalMetadata": {"run": 7}}'
    envelope = routed_envelope(
        tenant, raw_body=raw_body, external_id="ext-1", received_at=T0, key="n8n", platform=tenant.n8n
    )
    record = consumer_record(encode(envelope), key=b"the-key", offset=42, headers=[("h", b"v")])
    item = decode_record(record)
    assert isinstance(item, Pending)
    row = item.row
    assert row.id == envelope.trace_id
    assert row.project_id == tenant.project_id
    assert row.platform_id == tenant.n8n  # the router's decision, not the explicit hint
    assert row.api_key_id == tenant.key_ids["n8n"]
    assert row.external_id == "ext-1"
    assert row.body_shape == "data"
    assert row.payload == raw_body.decode()  # byte for byte what the client sent
    assert msgspec.json.decode(row.metadata or "") == {"workflowId": "wf-1", "n": [1, 2]}
    assert msgspec.json.decode(row.external_metadata or "") == {"run": 7}
    assert row.received_at == T0
    assert (item.source.key, item.source.value, item.source.offset) == (b"the-key", record.value, 42)
    assert item.source.headers == (("h", b"v"),)


@pytest.mark.parametrize(
    "raw_body", [b'{"data": 1}', b'{"data": 1, "metadata": null, "externalMetadata": null}']
)
def test_absent_or_null_metadata_is_sql_null(tenant: Tenant, raw_body: bytes) -> None:
    row = pending(tenant, raw_body=raw_body).row
    assert row.metadata is None and row.external_metadata is None


def test_undecodable_records_become_invalid_envelope_letters(tenant: Tenant) -> None:
    good = encode(routed_envelope(tenant))
    raw_only = msgspec.json.encode(
        {k: v for k, v in msgspec.json.decode(good).items() if k != "routed_platform_id"}
    )
    array_body = good.replace(b'"body":{ "data"', b'"body":[{ "data"').replace(b'"..." } }', b'"..." } }]')
    assert array_body != good
    naive = msgspec.json.decode(good)
    naive["received_at"] = "2026-01-02T03:04:05"
    future_version = msgspec.json.decode(good) | {"v": 99}
    not_utf8 = good.replace(b'"input": "..."', b'"input": "\xff\xfe"')
    assert not_utf8 != good
    cases = [
        not_utf8,
        b"not json",
        raw_only,
        array_body,
        msgspec.json.encode(naive),
        msgspec.json.encode(future_version),
        None,
    ]
    decoded = decode_records(consumer_record(value, offset=i) for i, value in enumerate(cases))
    assert decoded.pending == []
    assert [item.source.offset for item in decoded.invalid] == list(range(len(cases)))
    assert all(
        isinstance(item, Invalid) and item.dead.reason == "invalid_envelope" for item in decoded.invalid
    )
    assert all(item.dead.detail for item in decoded.invalid)


def test_json_the_database_will_refuse_is_left_for_the_database_to_judge(tenant: Tenant) -> None:
    """Decoding does not second-guess PostgreSQL: a \\u0000 is valid JSON, so it becomes a row."""
    row = pending(tenant, raw_body=b'{"data": "nul \\u0000 here"}').row
    assert "\\u0000" in row.payload


# -- the collapse rule ---------------------------------------------------------------------------


def test_newest_version_of_an_external_id_wins_whatever_the_order(tenant: Tenant) -> None:
    old = pending(tenant, external_id="x", received_at=T0, raw_body=body("old"))
    new = pending(
        tenant, external_id="x", received_at=T0 + dt.timedelta(microseconds=1), raw_body=body("new")
    )
    for order in ([old, new], [new, old]):
        plan = collapse(order)
        assert [p.row.id for p in plan.writes] == [new.row.id]
        assert [p.row.id for p in plan.stale] == [old.row.id]
        assert plan.duplicates == []


def test_the_same_trace_twice_in_a_batch_is_a_duplicate(tenant: Tenant) -> None:
    a = pending(tenant)
    b = pending(tenant, external_id="e")
    plan = collapse([a, b, a, b, a])
    assert [p.row.id for p in plan.writes] == [a.row.id, b.row.id]
    assert [p.row.id for p in plan.duplicates] == [a.row.id, b.row.id, a.row.id]
    assert plan.stale == []


def test_traces_without_external_id_are_keyed_by_trace_id(tenant: Tenant) -> None:
    items = [pending(tenant, received_at=T0) for _ in range(5)]  # same received-at, different ids
    plan = collapse(items)
    assert plan.writes == items
    assert len({identity(p.row) for p in items}) == 5


def test_external_ids_are_scoped_by_project(tenant: Tenant) -> None:
    other = Tenant(uuid.uuid4(), tenant.n8n, tenant.flowise, tenant.http, "wf", "cf", key_ids=tenant.key_ids)
    plan = collapse([pending(tenant, external_id="same"), pending(other, external_id="same")])
    assert len(plan.writes) == 2


def test_external_ids_are_scoped_by_platform(tenant: Tenant) -> None:
    """Two platforms that reuse an external id (two n8n instances numbering executions alike, or
    a key of another platform replaying an id) keep two traces: the platform is in the identity."""
    prod = pending(tenant, external_id="42", platform=tenant.n8n, received_at=T0)
    staging = pending(
        tenant, external_id="42", platform=tenant.flowise, received_at=T0 + dt.timedelta(seconds=1)
    )
    plan = collapse([prod, staging])
    assert plan.writes == [prod, staging] and not plan.stale
    assert identity(prod.row) == (tenant.project_id, tenant.n8n, "42") != identity(staging.row)


def test_equal_received_at_is_broken_by_trace_id_deterministically(tenant: Tenant) -> None:
    a = pending(tenant, external_id="x", received_at=T0)
    b = pending(tenant, external_id="x", received_at=T0)
    winner = max(a, b, key=lambda p: p.row.id)
    assert collapse([a, b]).writes == [winner] == collapse([b, a]).writes


# -- conflicts with what is stored ---------------------------------------------------------------


def test_classify_conflicts(tenant: Tenant) -> None:
    current = pending(tenant, external_id="x", received_at=T0).row
    replaced = pending(tenant, external_id="y", received_at=T0).row
    older = pending(tenant, external_id="z", received_at=T0).row
    stored = {
        (tenant.project_id, tenant.http, "x"): StoredVersion(
            current.id, current.received_at
        ),  # this very version
        (tenant.project_id, tenant.http, "y"): StoredVersion(
            uuid.uuid4(), T0 + dt.timedelta(seconds=1)
        ),  # replaced since
        (tenant.project_id, tenant.http, "z"): StoredVersion(uuid.uuid4(), T0),  # an equal time, a winning id
    }
    assert classify_conflicts([current, replaced, older], stored) == {
        current.id: "duplicate",
        replaced.id: "stale",
        older.id: "stale",
    }


# -- last-used tracker ---------------------------------------------------------------------------


def test_tracker_keeps_the_newest_use_per_key_and_never_goes_back() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    tracker = LastUsedTracker()
    tracker.note_all([(a, T0), (a, T0 + dt.timedelta(seconds=2)), (a, T0 + dt.timedelta(seconds=1)), (b, T0)])
    assert len(tracker) == 2
    marks = tracker.take()
    assert marks == {a: T0 + dt.timedelta(seconds=2), b: T0}
    assert tracker.take() == {}
    tracker.note(a, T0 + dt.timedelta(seconds=9))
    tracker.give_back(marks)  # a failed flush: merged back, the newer mark stays
    assert tracker.take() == {a: T0 + dt.timedelta(seconds=9), b: T0}


# -- dead letters --------------------------------------------------------------------------------


def test_letter_keeps_key_and_value_and_explains_itself(tenant: Tenant) -> None:
    item = pending(tenant, offset=17)
    out = letter(item.source, rejected("PostgreSQL refused trace X: boom"))
    assert (out.key, out.value, out.reason) == (item.source.key, item.source.value, "storage_rejected")
    headers = dlq.read_headers(out.headers)
    assert headers[dlq.REASON] == "storage_rejected"
    assert headers[dlq.STAGE] == "storage"
    assert headers[dlq.DETAIL] == "PostgreSQL refused trace X: boom"
    assert headers[dlq.SOURCE] == "traces.routed/0/17"
    assert headers[dlq.ATTEMPT] == "1"
    assert headers[dlq.FAILED_AT].endswith("Z")


def test_letter_of_a_replayed_record_keeps_its_attempt_count(tenant: Tenant) -> None:
    record = consumer_record(b"junk", headers=[(dlq.ATTEMPT, b"3")])
    decoded = decode_record(record)
    assert isinstance(decoded, Invalid)
    assert dlq.read_headers(letter(decoded.source, decoded.dead).headers)[dlq.ATTEMPT] == "3"
