"""What the storage worker refuses to store, against the real PostgreSQL: a trace whose platform
was deleted after the router chose it (dead-lettered ``platform_unresolved``), and a trace the
ingest API answered 503 and cancelled (``shared.db.cancellations``) — including the race where the
cancellation and the write meet. Also migration 0005 on rows stored before it."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest

from shared import registry
from shared.contracts.envelope import encode
from shared.db import cancellations, migrate
from shared.devstack.pipeline import Tenant
from shared.registry.validation import one
from shared.runtime.settings import Settings, libpq_url
from storage_worker.database import Database
from storage_worker.rows import Pending, decode_record
from storage_worker.write import write_rows
from tests.integration.test_migrations import scratch_db  # noqa: F401  (fixture)
from tests.storage_helpers import consumer_record, routed_envelope


def item(tenant: Tenant, **kwargs: Any) -> Pending:
    decoded = decode_record(consumer_record(encode(routed_envelope(tenant, **kwargs))))
    assert isinstance(decoded, Pending)
    return decoded


async def count(adb: psycopg.AsyncConnection, ids: list[uuid.UUID]) -> int:
    cur = await adb.execute("SELECT count(*) FROM traces WHERE id = ANY(%s)", (ids,))
    return one(await cur.fetchone())[0]


async def test_a_trace_routed_to_a_deleted_platform_is_not_stored(
    traces_db: Database, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    doomed = await registry.create_platform(
        adb, tenant.project_id, f"doomed-{uuid.uuid4().hex[:6]}", "custom"
    )
    late = item(tenant, platform=doomed.id, external_id=f"x-{uuid.uuid4()}")
    fine = item(tenant)
    await registry.delete_platform(adb, tenant.project_id, doomed.id)
    result = await write_rows(await traces_db.connection(), [late, fine])
    assert [o.row.id for o in result.orphaned] == [late.row.id]
    assert result.outcomes == {fine.row.id: "stored"}
    assert await count(adb, [late.row.id, fine.row.id]) == 1
    cur = await adb.execute("SELECT count(*) FROM trace_aliases WHERE id = %s", (late.row.id,))
    assert await cur.fetchone() == (0,)


async def test_a_platform_being_deleted_while_its_trace_is_written(
    traces_db: Database, tenant: Tenant, settings: Settings, adb: psycopg.AsyncConnection
) -> None:
    """The race: the platform's delete is in flight when the batch is written. The write's
    ``FOR KEY SHARE`` waits for the delete, then finds the platform gone: dead-lettered, not
    stored on a platform that no longer exists."""
    platform = await registry.create_platform(adb, tenant.project_id, f"p-{uuid.uuid4().hex[:6]}", "custom")
    trace = item(tenant, platform=platform.id)
    async with await psycopg.AsyncConnection.connect(libpq_url(settings.database_url)) as deleter:
        await deleter.execute("DELETE FROM platforms WHERE id = %s", (platform.id,))  # not committed yet
        writing = asyncio.create_task(write_rows(await traces_db.connection(), [trace]))
        await asyncio.sleep(0.5)
        assert not writing.done()  # waits for the delete to commit or roll back
        await deleter.commit()
    result = await asyncio.wait_for(writing, 10)
    assert [o.row.id for o in result.orphaned] == [trace.row.id] and not result.outcomes
    assert await count(adb, [trace.row.id]) == 0


async def test_cancelled_traces_are_never_stored_and_late_acks_are_found(
    traces_db: Database, tenant: Tenant, adb: psycopg.AsyncConnection
) -> None:
    stored_first = item(tenant)
    await write_rows(await traces_db.connection(), [stored_first])
    cancelled = item(tenant)
    versioned = item(tenant, external_id=f"c-{uuid.uuid4()}")
    # The ingest API cancels three ids: one was stored already (a late ack), two were not.
    found = await cancellations.cancel(adb, [stored_first.row.id, cancelled.row.id, versioned.row.id])
    assert found == {stored_first.row.id}
    cur = await adb.execute(
        "SELECT id FROM trace_cancellations WHERE id = ANY(%s)",
        ([stored_first.row.id, cancelled.row.id, versioned.row.id],),
    )
    assert {r for (r,) in await cur.fetchall()} == {cancelled.row.id, versioned.row.id}

    # ... and they reach the storage worker later (the producer's buffer drained): not stored.
    fine = item(tenant)
    result = await write_rows(await traces_db.connection(), [cancelled, versioned, fine])
    assert {p.row.id for p in result.cancelled} == {cancelled.row.id, versioned.row.id}
    assert result.outcomes == {fine.row.id: "stored"}
    assert await count(adb, [cancelled.row.id, versioned.row.id]) == 0
    # Re-deliveries and replays of a cancelled trace are refused the same way, forever.
    again = await write_rows(await traces_db.connection(), [versioned])
    assert [p.row.id for p in again.cancelled] == [versioned.row.id] and not again.outcomes


async def test_cancel_waits_for_a_storage_transaction_and_then_sees_its_rows(
    traces_db: Database, tenant: Tenant, settings: Settings
) -> None:
    """The race: the trace is being written while the ingest API cancels it. The cancellation
    waits for the write to commit, then finds the trace stored and withdraws: no 503 for a
    stored trace, no stored trace after a 503."""
    racing = item(tenant)
    conn = await traces_db.connection()
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as other:
        async with conn.transaction():
            async with conn.cursor() as cur:
                assert await cancellations.fence(cur, [racing.row.id]) == set()
            await conn.execute(
                "INSERT INTO traces (id, project_id, platform_id, body_shape, payload, received_at) "
                "VALUES (%s, %s, %s, 'data', '{}', now())",
                (racing.row.id, tenant.project_id, tenant.http),
            )
            cancelling = asyncio.create_task(cancellations.cancel(other, [racing.row.id]))
            await asyncio.sleep(0.5)
            assert not cancelling.done()  # waits for the storage transaction
        assert await asyncio.wait_for(cancelling, 10) == {racing.row.id}
        cur2 = await other.execute("SELECT count(*) FROM trace_cancellations WHERE id = %s", (racing.row.id,))
        assert await cur2.fetchone() == (0,)


NAMESPACE = uuid.UUID("5b0e7a52-3d2b-4c1e-9f4a-6f7469707470")


def test_migration_0005_rekeys_otlp_traces_and_keeps_old_ids_as_aliases(scratch_db: str) -> None:  # noqa: F811
    migrate.upgrade(scratch_db, "0004")
    project, platform, part = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    external = "otlp:" + "ab" * 16
    old_id = uuid.uuid5(NAMESPACE, f"{project}/{external}")  # 0004's per-project id
    now = dt.datetime.now(dt.UTC)
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        conn.execute("INSERT INTO projects (id, name) VALUES (%s, 'p')", (project,))
        conn.execute(
            "INSERT INTO traces (id, project_id, platform_id, external_id, body_shape, payload, received_at) "
            "VALUES (%s, %s, %s, %s, 'otlp', '{}', %s)",
            (old_id, project, platform, external, now),
        )
        conn.execute("INSERT INTO trace_spans VALUES (%s, 's1', %s, %s, '{}', '{}')", (old_id, part, now))
    migrate.upgrade(scratch_db, "0005")
    new_id = uuid.uuid5(NAMESPACE, f"{project}/{platform}/{external}")
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        assert conn.execute("SELECT id FROM traces").fetchall() == [(new_id,)]
        assert conn.execute("SELECT trace_id FROM trace_spans").fetchall() == [(new_id,)]
        assert conn.execute("SELECT id, platform_id, external_id FROM trace_aliases").fetchall() == [
            (old_id, platform, external)
        ]
        # the same external id on another platform is another trace now
        conn.execute(
            "INSERT INTO traces (id, project_id, platform_id, external_id, body_shape, payload, received_at) "
            "VALUES (%s, %s, %s, %s, 'otlp', '{}', %s)",
            (uuid.uuid4(), project, uuid.uuid4(), external, now),
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO traces (id, project_id, platform_id, external_id, body_shape, payload, received_at) "
                "VALUES (%s, %s, %s, %s, 'otlp', '{}', %s)",
                (uuid.uuid4(), project, platform, external, now),
            )
    assert migrate.current(scratch_db) == "0005"
