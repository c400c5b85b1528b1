"""``api_keys.last_used_at`` from stored traces: coalesced in memory, flushed every few seconds.

Writing the key's row once per trace would turn every trace into a hot-row update; instead the
tracker keeps, per key id, the newest ``received_at`` seen since the last flush (pure, no I/O),
and the flusher writes all of them with one statement every ``LAST_USED_FLUSH_SECONDS`` and once
more at shutdown. ``GREATEST`` in SQL means the time never moves backwards, whatever order
workers flush in; a key deleted meanwhile simply matches no row. A failed flush gives its marks
back to the tracker, so the next flush carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
import structlog

from shared.runtime.backoff import Backoff, pause
from storage_worker.database import Database

log = structlog.get_logger(__name__)

Marks = dict[uuid.UUID, dt.datetime]


class LastUsedTracker:
    """The newest use of each key since the last flush. Pure bookkeeping."""

    def __init__(self) -> None:
        self._marks: Marks = {}

    def note(self, key_id: uuid.UUID, at: dt.datetime) -> None:
        current = self._marks.get(key_id)
        if current is None or at > current:
            self._marks[key_id] = at

    def note_all(self, uses: Iterable[tuple[uuid.UUID, dt.datetime]]) -> None:
        for key_id, at in uses:
            self.note(key_id, at)

    def take(self) -> Marks:
        """Everything noted so far; the tracker starts empty again."""
        marks, self._marks = self._marks, {}
        return marks

    def give_back(self, marks: Mapping[uuid.UUID, dt.datetime]) -> None:
        """Marks whose flush failed: merged back (newest wins) for the next flush."""
        self.note_all(marks.items())

    def __len__(self) -> int:
        return len(self._marks)


UPDATE_LAST_USED = """
UPDATE api_keys AS k
SET last_used_at = GREATEST(coalesce(k.last_used_at, u.at), u.at)
FROM unnest(%s::uuid[], %s::timestamptz[]) AS u(id, at)
WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)
"""
# The extra WHERE skips rows that would not change: no dead tuple, no WAL, for keys already current.


async def write_marks(conn: psycopg.AsyncConnection[Any], marks: Mapping[uuid.UUID, dt.datetime]) -> int:
    """One UPDATE for all keys (sorted by id, so concurrent workers lock rows in the same order)."""
    ids = sorted(marks)
    async with conn.transaction():
        cur = await conn.execute(UPDATE_LAST_USED, (ids, [marks[i] for i in ids]))
        return cur.rowcount


async def flush(tracker: LastUsedTracker, db: Database) -> bool:
    marks = tracker.take()
    if not marks:
        return True
    try:
        updated = await write_marks(await db.connection(), marks)
    except BaseException as exc:
        tracker.give_back(marks)  # whatever happened, including a cancelled shutdown flush
        if not isinstance(exc, Exception):
            raise
        await db.failed(exc)
        log.warning("last_used_at flush failed; will retry", keys=len(marks), error=repr(exc))
        return False
    log.debug("last_used_at flushed", keys=len(marks), updated=updated)
    return True


async def flush_every(tracker: LastUsedTracker, db: Database, interval: float, stop: asyncio.Event) -> None:
    """Flush every ``interval`` seconds until ``stop`` is set (the final flush is the caller's)."""
    while not stop.is_set():
        await pause(interval, stop)
        if not stop.is_set():
            await flush(tracker, db)


async def final_flush(tracker: LastUsedTracker, db: Database, within: float = 5.0) -> None:
    """At shutdown: retry for up to ``within`` seconds, then give up loudly. Bounded, so a
    database that is down cannot hold a SIGTERM past a supervisor's grace period (the times are a
    convenience, not data: the traces themselves are committed)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            backoff = Backoff(initial=0.25, cap=2.0)
            while not await flush(tracker, db):
                await backoff.sleep(backoff.next_delay())
            return
    log.error("last_used_at not written at shutdown", keys=len(tracker))
