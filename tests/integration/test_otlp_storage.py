"""The OTLP merge in the storage worker: the pure rule (decode, merge spans, fold parts in a batch,
classify outcomes) and the write against the real PostgreSQL (a trace is the union of its parts'
spans whatever the order, re-deliveries change nothing, a re-sent span replaces its version)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import psycopg
import pytest

from shared.contracts import otlp
from shared.contracts.envelope import encode
from shared.devstack.pipeline import Tenant
from storage_worker.database import Database
from storage_worker.merge import classify, fold, merge_spans
from storage_worker.rows import Invalid, Pending, SpanVersion, decode_record, stored_id
from storage_worker.upsert import collapse
from storage_worker.write import WriteResult, write_rows
from tests.otlp_helpers import canonical_span, otlp_envelope
from tests.storage_helpers import consumer_record

T0 = dt.datetime(2026, 4, 1, 9, 0, tzinfo=dt.UTC)
SEC = dt.timedelta(seconds=1)


def new_trace() -> str:
    return uuid.uuid4().hex


def part(
    tenant: Tenant, trace_hex: str, *spans: otlp.CanonicalSpan, at: dt.datetime = T0, **kwargs: Any
) -> Pending:
    decoded = decode_record(
        consumer_record(encode(otlp_envelope(tenant, trace_hex, list(spans), received_at=at, **kwargs)))
    )
    assert isinstance(decoded, Pending), decoded
    return decoded


@pytest.fixture
def mem_tenant() -> Tenant:
    t = Tenant(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "wf", "cf")
    t.key_ids = {"all": uuid.uuid4()}
    return t


# -- pure ------------------------------------------------------------------------------------------


def test_an_otlp_record_becomes_a_row_with_versioned_spans(mem_tenant: Tenant) -> None:
    trace_hex = new_trace()
    item = part(
        mem_tenant, trace_hex, canonical_span("a" * 16, "root"), canonical_span("b" * 16, "child", "a" * 16)
    )
    row = item.row
    assert (row.body_shape, row.external_id) == ("otlp", f"otlp:{trace_hex}")
    assert msgspec.json.decode(row.payload) == {"traceId": trace_hex}
    assert msgspec.json.decode(row.metadata or "") == {"service.name": "shop"}
    assert [s.span_id for s in row.spans] == ["a" * 16, "b" * 16]
    assert all(s.part_id == row.id and s.received_at == T0 for s in row.spans)
    assert msgspec.json.decode(row.spans[1].span)["parent_span_id"] == "a" * 16
    expected = otlp.stored_trace_id(mem_tenant.project_id, row.platform_id, f"otlp:{trace_hex}")
    assert stored_id(row) == expected != row.id


def test_malformed_otlp_bodies_are_invalid_envelopes(mem_tenant: Tenant) -> None:
    good = otlp_envelope(mem_tenant, new_trace(), [canonical_span("a" * 16)], received_at=T0)
    cases = [
        msgspec.structs.replace(good, body=msgspec.Raw(b'{"traceId": "x", "resource": {}, "spans": []}')),
        msgspec.structs.replace(good, body=msgspec.Raw(b'{"traceId": "x", "spans": [{"name": "no id"}]}')),
        msgspec.structs.replace(good, external_id="otlp:another"),
        msgspec.structs.replace(good, body=msgspec.Raw(b'{"data": 1}')),
    ]
    for envelope in cases:
        decoded = decode_record(consumer_record(encode(envelope)))
        assert isinstance(decoded, Invalid) and decoded.dead.reason == "invalid_envelope", envelope


def version(span_id: str, at: dt.datetime, part_id: uuid.UUID, text: str = "{}") -> SpanVersion:
    return SpanVersion(span_id, part_id, at, text, "{}")


def test_merge_spans_keeps_the_newest_version_of_each_span_in_any_order() -> None:
    p1, p2, p3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    a1, b1 = version("a", T0, p1, "a1"), version("b", T0, p1, "b1")
    b2, c2 = version("b", T0 + SEC, p2, "b2"), version("c", T0 + SEC, p2, "c2")
    a3 = version("a", T0 - SEC, p3, "a-older")
    expected = {"a": "a1", "b": "b2", "c": "c2"}
    for groups in (
        [[a1, b1], [b2, c2], [a3]],
        [[a3], [b2, c2], [a1, b1]],
        [[b2, c2], [a1, b1], [a3], [a1, b1]],
    ):
        merged = merge_spans(*groups)
        assert {s.span_id: s.span for s in merged} == expected
    tie_low, tie_high = sorted([uuid.uuid4(), uuid.uuid4()])  # same instant: the larger part id wins
    assert merge_spans([version("a", T0, tie_high, "hi")], [version("a", T0, tie_low, "lo")])[0].span == "hi"


def test_collapse_merges_parts_of_one_trace_instead_of_dropping_them(mem_tenant: Tenant) -> None:
    trace_hex, other = new_trace(), new_trace()
    first = part(mem_tenant, trace_hex, canonical_span("a" * 16, "a"), at=T0)
    second = part(
        mem_tenant, trace_hex, canonical_span("b" * 16, "b"), canonical_span("a" * 16, "a2"), at=T0 + SEC
    )
    third = part(mem_tenant, trace_hex, canonical_span("c" * 16, "c"), at=T0 - SEC)
    unrelated = part(mem_tenant, other, canonical_span("d" * 16), at=T0)
    plan = collapse([first, second, unrelated, third, second])
    assert plan.stale == [] and [d.row.id for d in plan.duplicates] == [second.row.id]
    assert len(plan.writes) == 2
    merged = plan.writes[0]
    assert merged.row.id == second.row.id and merged.source == second.source  # the newest part's row
    assert [p.row.id for p in merged.originals] == [first.row.id, second.row.id, third.row.id]
    names = {s.span_id: msgspec.json.decode(s.span)["name"] for s in merged.row.spans}
    assert names == {"a" * 16: "a2", "b" * 16: "b", "c" * 16: "c"}
    assert plan.writes[1] is unrelated and unrelated.originals == (unrelated,)
    # folding is order-independent
    again = fold(fold(third, second), first)
    assert {s.span_id: s.span for s in again.row.spans} == {s.span_id: s.span for s in merged.row.spans}
    assert again.row.id == merged.row.id


def test_classify_names_every_part(mem_tenant: Tenant) -> None:
    trace_hex = new_trace()
    old = part(mem_tenant, trace_hex, canonical_span("a" * 16), at=T0).row
    new = part(mem_tenant, trace_hex, canonical_span("a" * 16), canonical_span("b" * 16), at=T0 + SEC).row
    a, b = "a" * 16, "b" * 16
    # a new trace: the newest part created it; the older one's only span lost in the batch
    assert classify([old, new], inserted=True, written={(a, new.id), (b, new.id)}, stored={}) == {
        new.id: "stored",
        old.id: "stale",
    }
    # an existing trace: parts that wrote spans are merged
    assert classify([old], inserted=False, written={(a, old.id)}, stored={}) == {old.id: "merged"}
    # nothing written: its own spans are stored (re-delivery) or newer ones are (stale)
    assert classify([old], inserted=False, written=set(), stored={a: old.id}) == {old.id: "duplicate"}
    assert classify([old], inserted=False, written=set(), stored={a: new.id}) == {old.id: "stale"}


# -- against PostgreSQL ----------------------------------------------------------------------------


async def write(traces_db: Database, items: list[Pending]) -> WriteResult:
    result = await write_rows(await traces_db.connection(), items)
    assert not result.rejected
    return result


async def stored(
    adb: psycopg.AsyncConnection, tenant: Tenant, trace_hex: str
) -> tuple[tuple[Any, ...], dict[str, dict[str, Any]]]:
    cur = await adb.execute(
        """SELECT id, platform_id, received_at, stored_at, updated_at, payload, metadata FROM traces
           WHERE project_id = %s AND external_id = %s""",
        (tenant.project_id, f"otlp:{trace_hex}"),
    )
    rows = await cur.fetchall()
    assert len(rows) == 1, rows
    cur = await adb.execute(
        "SELECT span_id, span, resource FROM trace_spans WHERE trace_id = %s ORDER BY span_id", (rows[0][0],)
    )
    return rows[0], {
        span_id: {**span, "resource": resource} for span_id, span, resource in await cur.fetchall()
    }


async def test_parts_merge_into_one_trace_in_any_order_and_idempotently(
    traces_db: Database, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    trace_hex = new_trace()
    a, b, c = "a" * 16, "b" * 16, "c" * 16
    p1 = part(tenant, trace_hex, canonical_span(a, "root"), at=T0)
    p2 = part(tenant, trace_hex, canonical_span(b, "child", a), at=T0 + SEC,
              resource={"service.name": "shop", "v": 2})  # fmt: skip
    p3 = part(tenant, trace_hex, canonical_span(c, "late", a), at=T0 - SEC)  # older, arrives last

    assert (await write(traces_db, [p2])).outcomes == {p2.row.id: "stored"}
    assert (await write(traces_db, [p1])).outcomes == {p1.row.id: "merged"}
    (trace_id, platform, received, stored_at, updated, payload, metadata), spans = await stored(
        adb, tenant, trace_hex
    )
    assert trace_id == otlp.stored_trace_id(tenant.project_id, p1.row.platform_id, f"otlp:{trace_hex}")
    assert (platform, received, metadata) == (p1.row.platform_id, T0 + SEC, {"service.name": "shop", "v": 2})
    assert payload == {"traceId": trace_hex}
    assert {k: v["name"] for k, v in spans.items()} == {a: "root", b: "child"}
    assert spans[a]["resource"] == {"service.name": "shop"} and spans[b]["resource"]["v"] == 2

    assert (await write(traces_db, [p3])).outcomes == {p3.row.id: "merged"}  # spans added, row kept
    row, spans = await stored(adb, tenant, trace_hex)
    assert (row[1], row[2]) == (p1.row.platform_id, T0 + SEC) and row[4] > updated and row[3] == stored_at
    assert set(spans) == {a, b, c}

    # re-deliveries, alone or together: nothing changes
    result = await write(traces_db, [p1, p2, p3])
    assert result.outcomes == {p1.row.id: "duplicate", p2.row.id: "duplicate", p3.row.id: "duplicate"}
    assert await stored(adb, tenant, trace_hex) == (row, spans)

    # a re-sent span replaces its version; an older version of it is stale
    resent = part(tenant, trace_hex, canonical_span(b, "child v2", a), at=T0 + 2 * SEC)
    assert (await write(traces_db, [resent])).outcomes == {resent.row.id: "merged"}
    older = part(tenant, trace_hex, canonical_span(b, "child v0", a), at=T0 - 2 * SEC)
    assert (await write(traces_db, [older])).outcomes == {older.row.id: "stale"}
    _, spans = await stored(adb, tenant, trace_hex)
    assert {k: v["name"] for k, v in spans.items()} == {a: "root", b: "child v2", c: "late"}


async def test_parts_in_one_batch_become_one_row(
    traces_db: Database, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    trace_hex = new_trace()
    spans = [canonical_span(f"{n:016x}", f"s{n}") for n in range(1, 4)]
    parts = [part(tenant, trace_hex, span, at=T0 + n * SEC) for n, span in enumerate(spans)]
    result = await write(traces_db, parts)
    assert sorted(result.outcomes.values()) == ["merged", "merged", "stored"]
    assert result.outcomes[parts[2].row.id] == "stored"  # the newest part's row
    row, stored_spans = await stored(adb, tenant, trace_hex)
    assert row[2] == T0 + 2 * SEC and len(stored_spans) == 3
    again = await write(traces_db, parts)  # the whole batch re-delivered
    assert set(again.outcomes.values()) == {"duplicate"}


async def test_a_refused_merge_dead_letters_every_part(
    traces_db: Database, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    trace_hex = new_trace()
    good = part(tenant, trace_hex, canonical_span("a" * 16, "fine"), at=T0)
    poison = part(tenant, trace_hex, canonical_span("b" * 16, "nul \u0000 here"), at=T0 + SEC)
    other = part(tenant, new_trace(), canonical_span("c" * 16), at=T0)
    result = await write_rows(await traces_db.connection(), [good, poison, other])
    assert [r.pending.row.id for r in result.rejected] == [poison.row.id]
    assert {p.row.id for p in result.rejected[0].pending.originals} == {good.row.id, poison.row.id}
    assert "OTLP trace" in result.rejected[0].detail
    assert result.outcomes == {other.row.id: "stored"}
    cur = await adb.execute(
        "SELECT count(*) FROM traces WHERE project_id = %s AND external_id = %s",
        (tenant.project_id, f"otlp:{trace_hex}"),
    )
    assert await cur.fetchone() == (0,)
