"""A 503 means "not stored": the fence between the ingest API and the storage worker.

When Kafka does not acknowledge a trace in time, the ingest API answers ``503`` — but the record
may still sit in the producer's buffer (or be in flight) and reach the broker later. A client that
retries, as it is told to, would then have its trace stored twice. So before answering ``503`` the
ingest API records the trace's id in ``trace_cancellations`` (:func:`cancel`), and the storage
worker never stores a cancelled id (:func:`fence`), whenever and however it arrives (late
delivery, re-delivery, a DLQ replay, a raw re-drive).

The two serialise on one table lock, so neither can miss the other:

- the storage worker takes ``SHARE`` on ``trace_cancellations`` at the start of each write
  transaction and reads the cancelled ids of its batch; the lock is held until it commits;
- ``cancel`` inserts (``ROW EXCLUSIVE``, which waits for every storage transaction holding
  ``SHARE``), then looks whether the trace was stored meanwhile. If it was — the ack was merely
  late — the cancellation is withdrawn in the same transaction and the trace is reported stored:
  the ingest API then answers ``202`` after all. Otherwise the cancellation commits before the
  ``503`` is sent, and any later storage transaction sees it.

Storage transactions are short (one batch), and ``cancel`` runs only on the failure path, so the
lock costs the hot path one uncontended ``LOCK`` and one index probe per batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

import psycopg

LOCK = "LOCK TABLE trace_cancellations IN SHARE MODE"
CANCELLED = "SELECT id FROM trace_cancellations WHERE id = ANY(%s)"

_INSERT = "INSERT INTO trace_cancellations (id) SELECT unnest(%s::uuid[]) ON CONFLICT DO NOTHING"
_STORED = """
SELECT id FROM traces WHERE id = ANY(%(ids)s)
UNION
SELECT a.id FROM trace_aliases a
JOIN traces t ON t.project_id = a.project_id AND t.platform_id = a.platform_id
             AND t.external_id = a.external_id
WHERE a.id = ANY(%(ids)s)
"""
_WITHDRAW = "DELETE FROM trace_cancellations WHERE id = ANY(%s)"


async def fence(cur: psycopg.AsyncCursor[Any], ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Storage side, first thing in the write transaction: lock, and the cancelled ids among ``ids``."""
    await cur.execute(LOCK)
    if not ids:
        return set()
    await cur.execute(CANCELLED, (list(ids),))
    return {found for (found,) in await cur.fetchall()}


async def cancel(conn: psycopg.AsyncConnection[Any], ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Ingest side, before answering 503: cancel ``ids``; returns those already stored (not cancelled).

    ``conn`` must not be inside a transaction; this commits its own."""
    if not ids:
        return set()
    wanted = list(ids)
    async with conn.transaction():
        await conn.execute(_INSERT, (wanted,))
        cur = await conn.execute(_STORED, {"ids": wanted})
        stored = {found for (found,) in await cur.fetchall()}
        if stored:
            await conn.execute(_WITHDRAW, (list(stored),))
    return stored
