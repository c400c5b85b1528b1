"""Retention (shared.db.retention) against the real PostgreSQL: old traces go with their aliases,
recent ones and identities replaced since stay, a later version of an expired identity is stored
afresh, receipts of expired ids are 404s, and a concurrent writer is neither blocked nor lost."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import psycopg
import pytest

from ingest_api.endpoints.trace_read import find_receipt, not_found, operator_params
from shared.contracts.envelope import encode
from shared.db import retention
from shared.devstack.pipeline import Tenant, make_tenant, service_env
from shared.runtime.settings import Settings, libpq_url
from storage_worker.database import Database
from storage_worker.retention import expire_every
from storage_worker.rows import Pending, decode_record
from storage_worker.sql import TOUCH_TRACES
from storage_worker.write import write_rows
from tests.storage_helpers import body, consumer_record, routed_envelope

NOW = dt.datetime.now(dt.UTC)
OLD = NOW - dt.timedelta(days=40)
CUTOFF = NOW - dt.timedelta(days=30)


def item(tenant: Tenant, **kwargs: Any) -> Pending:
    decoded = decode_record(consumer_record(encode(routed_envelope(tenant, **kwargs))))
    assert isinstance(decoded, Pending)
    return decoded


@pytest.fixture
async def own(settings: Settings) -> Tenant:
    """A project of the test's own: expiring it touches no other test's traces."""
    return await make_tenant(settings)


async def stored_ids(adb: psycopg.AsyncConnection, tenant: Tenant) -> set[uuid.UUID]:
    cur = await adb.execute("SELECT id FROM traces WHERE project_id = %s", (tenant.project_id,))
    return {found for (found,) in await cur.fetchall()}


async def alias_ids(adb: psycopg.AsyncConnection, tenant: Tenant) -> set[uuid.UUID]:
    cur = await adb.execute("SELECT id FROM trace_aliases WHERE project_id = %s", (tenant.project_id,))
    return {found for (found,) in await cur.fetchall()}


async def test_expiry_removes_old_traces_and_their_aliases_and_keeps_recent_ones(
    traces_db: Database, own: Tenant, adb: psycopg.AsyncConnection
) -> None:
    old_by_id = item(own, received_at=OLD)
    old_v1 = item(own, external_id="old", received_at=OLD, raw_body=body("v1"))
    old_v2 = item(own, external_id="old", received_at=OLD + dt.timedelta(hours=1), raw_body=body("v2"))
    # An identity first received before the cutoff and replaced after it: one trace, kept.
    kept_v1 = item(own, external_id="kept", received_at=OLD, raw_body=body("k1"))
    kept_v2 = item(own, external_id="kept", received_at=NOW, raw_body=body("k2"))
    recent = item(own, received_at=NOW)
    conn = await traces_db.connection()
    for batch in ([old_by_id, old_v1, kept_v1, recent], [old_v2, kept_v2]):
        result = await write_rows(conn, batch)
        assert not result.rejected and not result.orphaned
    assert await stored_ids(adb, own) == {old_by_id.row.id, old_v2.row.id, kept_v2.row.id, recent.row.id}
    aliases = {old_v1.row.id, old_v2.row.id, kept_v1.row.id, kept_v2.row.id}
    assert await alias_ids(adb, own) == aliases

    done = await retention.expire_project(adb, own.project_id, CUTOFF, batch=1)  # one row per transaction
    assert (done.traces, done.aliases) == (2, 2)
    assert await stored_ids(adb, own) == {kept_v2.row.id, recent.row.id}
    assert await alias_ids(adb, own) == {kept_v1.row.id, kept_v2.row.id}
    again = await retention.expire_project(adb, own.project_id, CUTOFF)
    assert (again.traces, again.aliases) == (0, 0)

    # Receipts: every id of the expired traces is unknown now (a 404 that says they may have
    # expired); the kept trace's first id still leads to it.
    for gone in (old_by_id, old_v1, old_v2):
        assert await find_receipt(adb, gone.row.id, operator_params(own.project_id)) is None
        assert retention.id_expired(gone.row.id, NOW, 30)
        answer = not_found(gone.row.id, retention_days=30)
        assert answer.status == 404 and "expired" in answer.details[0].msg
    assert "expired" not in not_found(recent.row.id, retention_days=30).details[0].msg
    receipt = await find_receipt(adb, kept_v1.row.id, operator_params(own.project_id))
    assert receipt is not None and not retention.id_expired(recent.row.id, NOW, 30)


async def test_a_later_version_of_an_expired_identity_is_stored_afresh(
    traces_db: Database, own: Tenant, adb: psycopg.AsyncConnection
) -> None:
    first = item(own, external_id="again", received_at=OLD)
    conn = await traces_db.connection()
    assert (await write_rows(conn, [first])).outcomes == {first.row.id: "stored"}
    assert (await retention.expire_project(adb, own.project_id, CUTOFF)).traces == 1
    later = item(own, external_id="again", received_at=NOW)
    assert (await write_rows(conn, [later])).outcomes == {later.row.id: "stored"}
    late_old = item(own, external_id="again", received_at=OLD + dt.timedelta(minutes=1))
    assert (await write_rows(conn, [late_old])).outcomes == {late_old.row.id: "stale"}  # the identity holds
    cur = await adb.execute(
        "SELECT id FROM traces WHERE project_id = %s AND external_id = 'again'", (own.project_id,)
    )
    assert await cur.fetchall() == [(later.row.id,)]


async def test_expiry_skips_a_row_a_writer_holds_and_never_waits_for_it(
    traces_db: Database, own: Tenant, adb: psycopg.AsyncConnection, settings: Settings
) -> None:
    held, free = item(own, received_at=OLD), item(own, received_at=OLD)
    assert not (await write_rows(await traces_db.connection(), [held, free])).rejected
    async with await psycopg.AsyncConnection.connect(libpq_url(settings.database_url)) as writer:
        await writer.execute(TOUCH_TRACES, ([held.row.id],))  # a storage transaction, still open
        started = time.monotonic()
        done = await asyncio.wait_for(retention.expire_project(adb, own.project_id, CUTOFF), 10)
        assert time.monotonic() - started < 5
        assert done.traces == 1
        await writer.commit()
    assert await stored_ids(adb, own) == {held.row.id}  # skipped this round ...
    assert (await retention.expire_project(adb, own.project_id, CUTOFF)).traces == 1  # ... taken the next


async def test_expiry_beside_a_continuous_writer_loses_nothing_recent(
    traces_db: Database, own: Tenant, adb: psycopg.AsyncConnection, settings: Settings
) -> None:
    conn = await traces_db.connection()
    old = [
        item(own, received_at=OLD + dt.timedelta(seconds=i), raw_body=body(f"old {i}")) for i in range(2000)
    ]
    for start in range(0, len(old), 500):
        assert not (await write_rows(conn, old[start : start + 500])).rejected
    # Old identities that the writer replaces while expiry runs: each ends as one trace, recent.
    identities = [f"live-{i}" for i in range(200)]
    for start in range(0, 200, 100):
        first = [item(own, external_id=e, received_at=OLD) for e in identities[start : start + 100]]
        assert not (await write_rows(conn, first)).rejected

    written: list[Pending] = []
    worst = 0.0

    async def writer() -> None:
        nonlocal worst
        for round_ in range(20):
            batch = [item(own, received_at=NOW, raw_body=body(f"new {round_} {i}")) for i in range(40)]
            batch += [
                item(own, external_id=e, received_at=NOW) for e in identities[round_ * 10 : round_ * 10 + 10]
            ]
            t0 = time.monotonic()
            result = await write_rows(conn, batch)
            worst = max(worst, time.monotonic() - t0)
            assert not result.rejected
            written.extend(batch)
            await asyncio.sleep(0)

    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as expirer:
        task = asyncio.create_task(writer())
        done = await retention.expire_project(expirer, own.project_id, CUTOFF, batch=50)
        await task
    rest = await retention.expire_project(adb, own.project_id, CUTOFF)  # anything skipped while locked
    # The 2000 old traces, and those old identities expiry reached before the writer replaced them.
    assert 2000 <= done.traces + rest.traces <= 2200
    assert worst < 5, f"a write waited {worst:.1f} s"
    stored = await stored_ids(adb, own)
    assert stored == {w.row.id for w in written}  # every recent write, and nothing old
    cur = await adb.execute(
        "SELECT count(*), count(DISTINCT external_id) FROM traces WHERE project_id = %s AND external_id IS NOT NULL",
        (own.project_id,),
    )
    assert await cur.fetchone() == (200, 200)  # one trace per identity, none duplicated


async def test_the_storage_workers_task_expires_and_stops(
    traces_db: Database, own: Tenant, adb: psycopg.AsyncConnection, settings: Settings
) -> None:
    ancient = NOW - dt.timedelta(days=4000)  # older than anything another test writes
    gone, kept = item(own, received_at=ancient), item(own, received_at=NOW)
    assert not (await write_rows(await traces_db.connection(), [gone, kept])).rejected
    stop = asyncio.Event()
    task = asyncio.create_task(expire_every(libpq_url(settings.database_url), 3650, stop, interval=0.1))
    deadline = time.monotonic() + 20
    while gone.row.id in await stored_ids(adb, own) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert await stored_ids(adb, own) == {kept.row.id}
    # Off: returns at once, touching nothing.
    await asyncio.wait_for(expire_every(libpq_url(settings.database_url), 0, asyncio.Event()), 1)


def _cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.ops.cli.main", "db", "expire", *args],
        env={**service_env(settings), "TRACE_RETENTION_DAYS": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_mibo_ingest_db_expire(
    traces_db: Database, own: Tenant, adb: psycopg.AsyncConnection, settings: Settings
) -> None:
    gone, kept = item(own, received_at=NOW - dt.timedelta(days=4000)), item(own, received_at=NOW)
    assert not (await write_rows(await traces_db.connection(), [gone, kept])).rejected
    off = await asyncio.to_thread(_cli, settings)
    assert off.returncode == 1 and "retention is off" in off.stderr
    done = await asyncio.to_thread(_cli, settings, TRACE_RETENTION_DAYS="3650")  # the setting's value
    assert done.returncode == 0, done.stderr
    assert re.match(r"expired \d+ trace\(s\) received over 3650 day\(s\) ago", done.stdout)
    assert await stored_ids(adb, own) == {kept.row.id}
