"""The storage worker's database edge against the real PostgreSQL, without Kafka: the bulk upsert
and its outcomes, poison rows isolated by bisection, a connection that heals after being killed,
and the coalesced last-used update."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest

from shared import registry
from shared.contracts.envelope import encode
from shared.devstack.pipeline import Tenant
from shared.registry.validation import one
from shared.runtime.settings import Settings, libpq_url
from storage_worker.database import Database
from storage_worker.last_used import LastUsedTracker, flush, write_marks
from storage_worker.rows import Pending, decode_record
from storage_worker.write import WriteResult, orphan_detail, write_rows
from tests.storage_helpers import body, consumer_record, routed_envelope

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
POISON = b'{"data": {"input": "\\u0000"}}'


def item(tenant: Tenant, **kwargs: Any) -> Pending:
    decoded = decode_record(consumer_record(encode(routed_envelope(tenant, **kwargs))))
    assert isinstance(decoded, Pending)
    return decoded


async def write(traces_db: Database, items: list[Pending]) -> WriteResult:
    result = await write_rows(await traces_db.connection(), items)
    assert not result.duplicates and not result.stale
    return result


async def test_outcomes_of_the_upsert(
    traces_db: Database, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    ext = f"w-{uuid.uuid4()}"
    a = item(tenant, received_at=T0)
    b = item(tenant, external_id=ext, received_at=T0, raw_body=body("b"))
    first = await write(traces_db, [a, b])
    assert first.outcomes == {a.row.id: "stored", b.row.id: "stored"} and not first.rejected

    newer = item(tenant, external_id=ext, received_at=T0 + dt.timedelta(seconds=1), raw_body=body("newer"))
    second = await write(traces_db, [a, newer])
    assert second.outcomes == {a.row.id: "duplicate", newer.row.id: "replaced"}

    older = item(tenant, external_id=ext, received_at=T0 - dt.timedelta(seconds=1), raw_body=body("older"))
    assert (await write(traces_db, [older])).outcomes == {older.row.id: "stale"}
    replayed = await write(traces_db, [b])  # the first version again, after it was replaced
    assert replayed.outcomes == {b.row.id: "stale"}
    assert (await write(traces_db, [newer])).outcomes == {newer.row.id: "duplicate"}  # the current one
    tie = item(tenant, external_id=ext, received_at=newer.row.received_at, raw_body=body("tie"))
    expected = "replaced" if tie.row.id > newer.row.id else "stale"  # ties: the larger id, as in collapse
    assert (await write(traces_db, [tie])).outcomes == {tie.row.id: expected}
    current = tie if expected == "replaced" else newer

    cur = await adb.execute(
        "SELECT id, payload, received_at FROM traces WHERE project_id = %s AND external_id = %s",
        (tenant.project_id, ext),
    )
    payload = {"data": {"input": "tie" if current is tie else "newer", "output": "..."}}
    assert await cur.fetchall() == [(current.row.id, payload, newer.row.received_at)]


async def test_poison_rows_are_isolated_and_the_rest_stored(
    traces_db: Database, settings: Settings, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    gone = await registry.create_project(adb, f"gone-{uuid.uuid4().hex[:8]}")
    await registry.delete_project(adb, gone.id)
    orphan_tenant = Tenant(
        gone.id, tenant.n8n, tenant.flowise, tenant.http, "wf", "cf", key_ids=tenant.key_ids
    )
    items = [item(tenant, raw_body=body(f"ok {i}")) for i in range(50)]
    bad = {
        0: item(tenant, raw_body=POISON),
        17: item(tenant, raw_body=POISON, external_id=f"p-{uuid.uuid4()}"),
    }
    bad[49] = item(orphan_tenant)
    for index, poison in bad.items():
        items[index] = poison

    result = await write(traces_db, items)
    # the project (hence the platform) deleted meanwhile: never stored, dead-lettered as unresolved
    assert [o.row.id for o in result.orphaned] == [bad[49].row.id]
    assert "no longer exists" in orphan_detail(bad[49].row)
    assert {r.pending.row.id for r in result.rejected} == {bad[0].row.id, bad[17].row.id}
    assert set(result.outcomes.values()) == {"stored"} and len(result.outcomes) == 47
    for rejected in result.rejected:
        assert str(rejected.pending.row.id) in rejected.detail
        assert "\\u0000 cannot be converted to text" in rejected.detail
    cur = await adb.execute("SELECT count(*) FROM traces WHERE id = ANY(%s)", ([i.row.id for i in items],))
    assert one(await cur.fetchone())[0] == 47


async def test_a_killed_connection_is_reopened(
    traces_db: Database, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    conn = await traces_db.connection()
    await adb.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        await write(traces_db, [item(tenant)])
    await traces_db.failed(RuntimeError("test"))
    fresh = item(tenant)
    assert (await write(traces_db, [fresh])).outcomes == {
        fresh.row.id: "stored"
    }  # staging table re-created too
    assert (await traces_db.connection()).info.backend_pid != conn.info.backend_pid


async def test_last_used_update_is_coalesced_monotonic_and_skips_deleted_keys(
    settings: Settings, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    kept = await registry.create_key(adb, settings.key_pepper, tenant.project_id, f"lu-{uuid.uuid4()}")
    revoked = await registry.create_key(adb, settings.key_pepper, tenant.project_id, f"lu-{uuid.uuid4()}")
    await registry.revoke_key(adb, revoked.id)

    async def last_used() -> dt.datetime | None:
        cur = await adb.execute("SELECT last_used_at FROM api_keys WHERE id = %s", (kept.id,))
        return one(await cur.fetchone())[0]

    database = Database(libpq_url(settings.database_url), name="test last_used")
    try:
        conn = await database.connection()
        assert await write_marks(conn, {kept.id: T0, revoked.id: T0}) == 1  # the revoked key: no row
        assert await last_used() == T0
        assert await write_marks(conn, {kept.id: T0 - dt.timedelta(days=1)}) == 0  # never backwards
        assert await last_used() == T0

        tracker = LastUsedTracker()
        tracker.note_all([(kept.id, T0 + dt.timedelta(seconds=s)) for s in (3, 1, 2)])
        assert await flush(tracker, database)
        assert await last_used() == T0 + dt.timedelta(seconds=3)
        assert len(tracker) == 0
    finally:
        await database.close()
