"""Retention: delete traces older than ``TRACE_RETENTION_DAYS``, a small batch at a time.

**What expires.** A trace whose ``received_at`` — when the version it holds now was received — is
older than the cutoff, with its spans (``ON DELETE CASCADE``) and its aliases (every accepted id
that led to it). A trace still being replaced stays: each new version moves its ``received_at``.
A version of an expired identity that arrives later is stored as a new trace (``stored``).

**Why batched deletes, not dropped partitions.** A unique index on a partitioned table must
contain the partition key, and the upsert identity is ``(project, platform, external id)`` with
no time in it: a time-partitioned ``traces`` needs a second, unpartitioned identity table (whose
rows then expire by ``DELETE`` anyway), a partition key copied into spans and aliases, and
partitions created ahead of every day a replay may reach. Batched deletes keep the identity
enforced by the one unique index it has now, and cost in proportion to what expires (measured in
``bench/dbgrowth.py``: README "Storage growth and retention"); partitioning is the step for
when that cost shows.

**Why it never blocks ingestion.** Each batch is its own short transaction that locks only the
rows it deletes, chosen ``FOR UPDATE SKIP LOCKED``: a row a storage worker is replacing right now
is skipped (and is no longer old once replaced). A writer that meets a row being deleted waits for
that one batch, then inserts its version afresh. No table lock is taken: the cancellation fence's
``SHARE`` lock on ``trace_cancellations`` and the platforms' ``FOR KEY SHARE`` are untouched.
Batches walk each project's oldest traces through ``ix_traces_project_received_id``.

**Several runners.** ``pg_try_advisory_lock``: when several storage workers run the periodic
task, one expires while the others skip the round.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

RETENTION_LOCK = 0x6D69626F5F726574  # "mibo_ret": one expirer at a time
BATCH = 2000

EXPIRE_BATCH = """
WITH doomed AS (
    SELECT id FROM traces
    WHERE project_id = %(project_id)s AND received_at < %(cutoff)s
    ORDER BY received_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM traces t USING doomed d WHERE t.id = d.id
    RETURNING t.project_id, t.platform_id, t.external_id
), aliases AS (
    DELETE FROM trace_aliases a USING gone g
    WHERE g.external_id IS NOT NULL AND a.project_id = g.project_id AND a.platform_id = g.platform_id
      AND a.external_id = g.external_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM aliases)
"""
# The deleted traces' identities have no trace any more (the unique index holds one per identity,
# and a concurrent writer's new version waits for this batch's commit), so all their aliases go.


@dataclass(frozen=True, slots=True)
class Expired:
    traces: int = 0
    aliases: int = 0
    skipped: bool = False  # another runner holds the retention lock

    def __add__(self, other: Expired) -> Expired:
        return Expired(
            self.traces + other.traces, self.aliases + other.aliases, self.skipped or other.skipped
        )


def cutoff(now: dt.datetime, days: int) -> dt.datetime:
    """Traces received before this instant are expired (``days`` whole days before ``now``)."""
    if days <= 0:
        raise ValueError("retention must be a positive number of days")
    return now - dt.timedelta(days=days)


def id_expired(trace_id: uuid.UUID, now: dt.datetime, days: int) -> bool:
    """Whether an accepted id (a UUIDv7: its first 48 bits are its acceptance time in ms) was
    accepted before the cutoff, so that a trace not found under it has expired rather than not
    arrived yet. Only meaningful for ids this service handed out; any other version says no."""
    if days <= 0 or trace_id.version != 7:
        return False
    accepted = dt.datetime.fromtimestamp((trace_id.int >> 80) / 1000, dt.UTC)
    return accepted < cutoff(now, days)


Go = Callable[[], bool]


def _always() -> bool:
    return True


async def expire_project(
    conn: psycopg.AsyncConnection[Any],
    project_id: uuid.UUID,
    before: dt.datetime,
    batch: int = BATCH,
    go_on: Go = _always,
) -> Expired:
    """Delete the project's traces received before ``before``, ``batch`` per transaction, until
    none is left (rows locked by a writer are skipped this round) or ``go_on()`` says stop.
    ``conn`` is in autocommit."""
    total = Expired()
    while go_on():
        async with conn.transaction():
            cur = await conn.execute(
                EXPIRE_BATCH, {"project_id": project_id, "cutoff": before, "batch": batch}
            )
            row = await cur.fetchone()
        done = Expired(*row) if row else Expired()
        total += done
        if done.traces < batch:
            return total
    return total


async def expire_before(
    conn: psycopg.AsyncConnection[Any], before: dt.datetime, batch: int = BATCH, go_on: Go = _always
) -> Expired:
    """Every project's traces received before ``before``; skipped when another runner is at it."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK,))
    row = await cur.fetchone()
    if not row or not row[0]:
        return Expired(skipped=True)
    try:
        cur = await conn.execute("SELECT id FROM projects ORDER BY id")
        total = Expired()
        for (project_id,) in await cur.fetchall():
            total += await expire_project(conn, project_id, before, batch, go_on)
        return total
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK,))


async def expire(url: str, days: int, batch: int = BATCH, go_on: Go = _always) -> Expired:
    """One round against the database at ``url`` (libpq form), with a connection of its own."""
    async with await psycopg.AsyncConnection.connect(
        url, autocommit=True, application_name="mibo-ingest retention"
    ) as conn:
        return await expire_before(conn, cutoff(dt.datetime.now(dt.UTC), days), batch, go_on)
