"""The storage worker as a real process (``python -m storage_worker``) against the real broker and
database: routed envelopes are produced straight to ``traces.routed`` and the ``traces`` table,
``api_keys.last_used_at``, ``traces.dlq`` and the worker's metrics are checked."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable

import msgspec
import psycopg

from shared import registry
from shared.contracts import dlq
from shared.contracts.envelope import encode
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Service, Tenant, TopicTap, metric_value
from shared.registry.validation import one
from shared.runtime.settings import Settings
from tests.storage_helpers import body, eventually, key_of, produce, routed_envelope

FLUSH_SECONDS = 0.5


async def stored(adb: psycopg.AsyncConnection, ids: list[uuid.UUID]) -> int:
    cur = await adb.execute("SELECT count(*) FROM traces WHERE id = ANY(%s)", (ids,))
    return one(await cur.fetchone())[0]


async def row_by_external_id(adb: psycopg.AsyncConnection, tenant: Tenant, external_id: str) -> dict | None:
    cur = await adb.execute(
        """SELECT id, payload, platform_id, api_key_id, received_at, stored_at, updated_at, count(*) OVER ()
           FROM traces WHERE project_id = %s AND external_id = %s""",
        (tenant.project_id, external_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    names = ("id", "payload", "platform_id", "api_key_id", "received_at", "stored_at", "updated_at", "rows")
    return dict(zip(names, row, strict=True))


async def test_a_newer_version_replaces_an_older_one_never_the_reverse(
    storage: Service, settings: Settings, topics: Topics, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    ext = f"req-{uuid.uuid4()}"
    t = dt.datetime.now(dt.UTC)
    first = routed_envelope(tenant, external_id=ext, received_at=t, raw_body=body("v1"), platform=tenant.n8n)
    await produce(settings, topics.routed, [first])

    async def has(text: str) -> bool:
        row = await row_by_external_id(adb, tenant, ext)
        return row is not None and row["payload"]["data"]["input"] == text

    await eventually(lambda: has("v1"), what="v1 stored")
    replaced_before = metric_value(storage, "storage_traces_replaced_total")
    stale_before = metric_value(storage, "storage_stale_versions_ignored_total")

    second = routed_envelope(
        tenant, external_id=ext, received_at=t + dt.timedelta(seconds=1), raw_body=body("v2"),
        key="n8n", platform=tenant.n8n,
    )  # fmt: skip
    await produce(settings, topics.routed, [second])
    await eventually(lambda: has("v2"), what="v2 replaced v1")
    assert metric_value(storage, "storage_traces_replaced_total") >= replaced_before + 1

    older = routed_envelope(
        tenant,
        external_id=ext,
        received_at=t - dt.timedelta(hours=1),
        raw_body=body("v0"),
        platform=tenant.n8n,
    )
    await produce(settings, topics.routed, [older])

    async def stale_counted() -> bool:
        return metric_value(storage, "storage_stale_versions_ignored_total") >= stale_before + 1

    await eventually(stale_counted, what="the older version to be processed")
    row = await row_by_external_id(adb, tenant, ext)
    assert row is not None
    assert row["rows"] == 1
    assert row["payload"] == msgspec.json.decode(body("v2"))  # the older version did not overwrite it
    assert row["id"] == second.trace_id  # the id of the version it holds (the last POST's answer)
    assert (row["platform_id"], row["api_key_id"]) == (tenant.n8n, tenant.key_ids["n8n"])
    assert row["received_at"] == second.received_at
    assert row["updated_at"] > row["stored_at"]


async def test_versions_in_one_batch_collapse_to_the_newest(
    storage: Service, settings: Settings, topics: Topics, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    ext = f"req-{uuid.uuid4()}"
    t = dt.datetime.now(dt.UTC)
    versions = [
        routed_envelope(
            tenant, external_id=ext, received_at=t + dt.timedelta(milliseconds=i), raw_body=body(f"v{i}")
        )
        for i in (3, 1, 4, 2)
    ]
    await produce(settings, topics.routed, versions)  # one producer batch, in this order

    async def settled() -> bool:
        row = await row_by_external_id(adb, tenant, ext)
        return row is not None and row["payload"]["data"]["input"] == "v4"

    await eventually(settled, what="the newest version")
    row = await row_by_external_id(adb, tenant, ext)
    assert row is not None and row["rows"] == 1


async def test_replaying_the_same_routed_messages_adds_no_row(
    storage: Service, settings: Settings, topics: Topics, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    envelopes = [routed_envelope(tenant, raw_body=body(f"t{i}")) for i in range(30)]
    envelopes += [routed_envelope(tenant, external_id=f"replay-{uuid.uuid4()}") for _ in range(20)]
    ids = [e.trace_id for e in envelopes]
    await produce(settings, topics.routed, envelopes)
    await eventually(lambda: _equals(stored(adb, ids), len(ids)), what="first delivery stored")
    duplicates = metric_value(storage, "storage_duplicates_ignored_total")

    await produce(settings, topics.routed, envelopes)  # the very same messages, again
    await produce(settings, topics.routed, envelopes[:10])  # and part of them a third time

    async def all_ignored() -> bool:
        return metric_value(storage, "storage_duplicates_ignored_total") >= duplicates + 60

    await eventually(all_ignored, what="the replays to be ignored")
    assert await stored(adb, ids) == len(ids)
    cur = await adb.execute(
        "SELECT count(*) FROM traces WHERE project_id = %s AND external_id = ANY(%s)",
        (tenant.project_id, [e.external_id for e in envelopes if e.external_id]),
    )
    assert one(await cur.fetchone())[0] == 20


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_last_used_at_moves_forward_within_seconds_and_never_backwards(
    storage: Service, settings: Settings, topics: Topics, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    created = await registry.create_key(adb, settings.key_pepper, tenant.project_id, f"lu-{uuid.uuid4()}")
    tenant.key_ids[created.name] = created.id

    async def last_used() -> dt.datetime | None:
        cur = await adb.execute("SELECT last_used_at FROM api_keys WHERE id = %s", (created.id,))
        return one(await cur.fetchone())[0]

    now = dt.datetime.now(dt.UTC)
    newest = routed_envelope(tenant, key=created.name, received_at=now)
    earlier = routed_envelope(tenant, key=created.name, received_at=now - dt.timedelta(seconds=30))
    await produce(settings, topics.routed, [earlier, newest])
    await eventually(lambda: _is(last_used(), now), timeout=10, what="last_used_at to reach the newest trace")

    older = routed_envelope(tenant, key=created.name, received_at=now - dt.timedelta(hours=1))
    await produce(settings, topics.routed, [older])
    await eventually(lambda: _equals(stored(adb, [older.trace_id]), 1), what="the older trace stored")
    await asyncio.sleep(FLUSH_SECONDS * 4)  # several flushes after the older trace was stored
    assert await last_used() == now  # never backwards

    later = routed_envelope(tenant, key=created.name, received_at=now + dt.timedelta(seconds=5))
    await produce(settings, topics.routed, [later])
    await eventually(lambda: _is(last_used(), later.received_at), timeout=10, what="last_used_at to move on")

    # A key revoked while its traces are in flight is simply skipped; the worker carries on.
    await registry.revoke_key(adb, created.id, project_id=tenant.project_id)
    gone = routed_envelope(tenant, key=created.name)
    await produce(settings, topics.routed, [gone])
    await eventually(lambda: _equals(stored(adb, [gone.trace_id]), 1), what="the revoked key's trace stored")
    assert storage.proc.poll() is None


async def _is(value: Awaitable[dt.datetime | None], expected: dt.datetime) -> bool:
    return await value == expected


async def test_a_row_postgresql_refuses_is_dead_lettered_and_the_rest_stored(
    storage: Service,
    settings: Settings,
    topics: Topics,
    tenant: Tenant,
    adb: psycopg.AsyncConnection,
    dlq_tap: TopicTap,
) -> None:
    good = [routed_envelope(tenant, raw_body=body(f"ok {i}")) for i in range(20)]
    poison = routed_envelope(tenant, raw_body=b'{"data": {"input": "a \\u0000 inside"}}', external_id="nul")
    batch = [*good[:10], poison, *good[10:]]
    dead_before = metric_value(storage, "storage_dead_lettered_total", reason="storage_rejected")
    await produce(settings, topics.routed, batch)

    record = await dlq_tap.wait_for(key_of(poison), timeout=30)
    assert record.value == encode(poison)  # the original value and key, unchanged
    headers = dlq.read_headers(record.headers)
    assert headers[dlq.REASON] == "storage_rejected"
    assert headers[dlq.STAGE] == "storage"
    assert headers[dlq.ATTEMPT] == "1"
    assert str(poison.trace_id) in headers[dlq.DETAIL]
    assert "\\u0000" in headers[dlq.DETAIL]  # PostgreSQL's own words: "\u0000 cannot be converted to text."
    topic, partition, offset = headers[dlq.SOURCE].rsplit("/", 2)
    assert topic == topics.routed and int(partition) >= 0 and int(offset) >= 0
    assert await stored(adb, [e.trace_id for e in good]) == 20
    assert await stored(adb, [poison.trace_id]) == 0
    assert metric_value(storage, "storage_dead_lettered_total", reason="storage_rejected") >= dead_before + 1


async def test_a_trace_of_a_deleted_project_is_dead_lettered_not_blocking(
    storage: Service,
    settings: Settings,
    topics: Topics,
    tenant: Tenant,
    adb: psycopg.AsyncConnection,
    dlq_tap: TopicTap,
) -> None:
    gone = await registry.create_project(adb, f"gone-{uuid.uuid4().hex[:8]}")
    orphan_tenant = Tenant(
        gone.id, tenant.n8n, tenant.flowise, tenant.http, "wf", "cf", key_ids=tenant.key_ids
    )
    await registry.delete_project(adb, gone.id)
    orphan = routed_envelope(orphan_tenant)
    fine = routed_envelope(tenant)
    await produce(settings, topics.routed, [orphan, fine])

    record = await dlq_tap.wait_for(key_of(orphan), timeout=30)
    headers = dlq.read_headers(record.headers)
    assert headers[dlq.REASON] == "platform_unresolved"  # its project, hence its platform, is gone
    assert "no longer exists" in headers[dlq.DETAIL]
    assert str(orphan.trace_id) in headers[dlq.DETAIL]
    await eventually(lambda: _equals(stored(adb, [fine.trace_id]), 1), what="the other trace stored")


async def test_an_undecodable_record_is_dead_lettered_and_the_partition_moves_on(
    storage: Service,
    settings: Settings,
    topics: Topics,
    tenant: Tenant,
    adb: psycopg.AsyncConnection,
    dlq_tap: TopicTap,
) -> None:
    from shared.runtime.kafka import make_producer

    junk_key = f"{tenant.project_id}:junk-{uuid.uuid4()}".encode()
    after = routed_envelope(
        tenant, external_id=junk_key.decode().split(":", 1)[1]
    )  # same key → same partition
    producer = make_producer(settings)
    await producer.start()
    try:
        await (await producer.send(topics.routed, b"\x00 not an envelope", key=junk_key))
    finally:
        await producer.stop()
    await produce(settings, topics.routed, [after])

    record = await dlq_tap.wait_for(junk_key, timeout=30)
    headers = dlq.read_headers(record.headers)
    assert (headers[dlq.REASON], headers[dlq.STAGE]) == ("invalid_envelope", "storage")
    assert record.value == b"\x00 not an envelope"
    await eventually(lambda: _equals(stored(adb, [after.trace_id]), 1), what="the next record stored")
