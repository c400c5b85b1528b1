"""The storage worker's second step: every ``traces.dlq`` record → one ``dlq_index`` row.

Receipts (``GET /public/traces/{id}``, ``mibo-ingest trace``) and ``mibo-ingest dlq stats`` read
the dead-letter topic through this index instead of the topic itself. The step runs in its own
consume loop (``shared.runtime.worker.consume``, consumer group ``<prefix>dlq_index_worker``):

records ─describe (pure: shared.runtime.dlq_reader.index_row)─▶ rows ─INSERT … ON CONFLICT DO NOTHING─▶ COMMIT ─▶ offsets

- **Idempotent.** Rows are keyed by the record's position (topic, partition, offset): a record
  re-delivered after a crash or a rebalance inserts nothing (``storage_dlq_index_duplicates_total``).
- **Resolved.** A dead-lettered trace that is stored later (``dlq replay``, ``replay raw``) is
  marked ``resolved_at`` by the write transaction that stores it (``write.py``); one stored before
  its record is indexed comes in resolved. The two sides serialise on an advisory lock
  (``sql.LOCK_DLQ_INDEX``), so neither misses the other.
- **Never blocks the partition.** A row PostgreSQL refuses (it cannot: text is cleaned of NUL,
  every column is typed from the record) would be logged, counted and skipped after the rest of
  its batch is written, one row per savepoint. Anything else (database away) is retried with the
  same records, like the storage step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import structlog

from shared.runtime.dlq_reader import IndexRow, index_row
from shared.runtime.worker import Batch
from storage_worker.database import Database
from storage_worker.metrics import StorageMetrics
from storage_worker.sql import INSERT_DLQ_INDEX, LOCK_DLQ_INDEX
from storage_worker.write import ROW_FAULTS

log = structlog.get_logger(__name__)


async def _insert(cur: psycopg.AsyncCursor[Any], rows: Sequence[IndexRow]) -> int:
    await cur.executemany(INSERT_DLQ_INDEX, [row.values() for row in rows])
    return max(0, cur.rowcount)


async def _insert_one_by_one(conn: psycopg.AsyncConnection[Any], rows: Sequence[IndexRow]) -> tuple[int, int]:
    """(inserted, refused): each row in a savepoint; a refused one is logged and skipped."""
    inserted = refused = 0
    for row in rows:
        try:
            async with conn.transaction(), conn.cursor() as cur:
                inserted += await _insert(cur, [row])
        except ROW_FAULTS as exc:
            refused += 1
            log.error(
                "dead letter not indexed: PostgreSQL refused its row",
                position=f"{row.topic}/{row.partition}/{row.offset}",
                reason=row.reason,
                error=str(exc),
            )
    return inserted, refused


class IndexStep:
    def __init__(self, db: Database, metrics: StorageMetrics) -> None:
        self._db = db
        self._metrics = metrics

    async def __call__(self, batch: Batch) -> None:
        rows = [index_row(record) for records in batch.values() for record in records]
        try:
            inserted, refused = await self._write(await self._db.connection(), rows)
        except Exception as exc:
            self._metrics.database_errors.inc()
            await self._db.failed(exc)
            log.error(
                "dead-letter index write failed; the batch will be retried, offsets stay uncommitted",
                records=len(rows),
                error=repr(exc),
                database_down_seconds=self._db.down_for(),
            )
            raise
        self._metrics.dlq_indexed.inc(inserted)
        self._metrics.dlq_index_duplicates.inc(len(rows) - inserted - refused)
        self._metrics.dlq_index_refused.inc(refused)
        log.debug("dead letters indexed", records=len(rows), inserted=inserted, refused=refused)

    async def _write(self, conn: psycopg.AsyncConnection[Any], rows: list[IndexRow]) -> tuple[int, int]:
        try:
            async with conn.transaction():
                await conn.execute(LOCK_DLQ_INDEX)
                async with conn.cursor() as cur:
                    return await _insert(cur, rows), 0
        except ROW_FAULTS as exc:
            log.warning(
                "dead-letter index batch refused; inserting row by row", records=len(rows), error=str(exc)
            )
        async with conn.transaction():
            await conn.execute(LOCK_DLQ_INDEX)
            return await _insert_one_by_one(conn, rows)
