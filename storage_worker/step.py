"""The storage worker's step: one batch of ``traces.routed`` records, stored exactly once.

decode (pure) → write (one transaction: admit, collapse, upsert) → dead letters (acknowledged) →
note keys.
The step returns only when the database transaction committed and every dead letter was
acknowledged; ``shared.runtime.worker.run_batches`` commits the batch's offsets only then, and retries
the same records (with capped backoff) when the step raises — for example while PostgreSQL is
restarting. Retrying is safe because the write is idempotent.
"""

from __future__ import annotations

import time
from collections import Counter

import structlog
from aiokafka import AIOKafkaProducer

from shared.contracts import dlq
from shared.runtime.worker import Batch
from storage_worker import dead_letters
from storage_worker.database import Database
from storage_worker.last_used import LastUsedTracker
from storage_worker.metrics import StorageMetrics
from storage_worker.rows import Pending, decode_records
from storage_worker.upsert import Outcome
from storage_worker.write import WriteResult, orphan_detail, write_rows

log = structlog.get_logger(__name__)

BatchKey = tuple[tuple[str, int, int, int], ...]


def _batch_key(batch: Batch) -> BatchKey:
    """The records a batch holds, by topic, partition and offset range."""
    return tuple(
        sorted(
            (tp.topic, tp.partition, records[0].offset, records[-1].offset) for tp, records in batch.items()
        )
    )


class StoreStep:
    def __init__(
        self,
        db: Database,
        producer: AIOKafkaProducer,
        dlq_topic: str,
        tracker: LastUsedTracker,
        metrics: StorageMetrics,
    ) -> None:
        self._db = db
        self._producer = producer
        self._dlq_topic = dlq_topic
        self._tracker = tracker
        self._metrics = metrics
        # The batch whose transaction committed but whose dead letters are not acknowledged yet:
        # when run_batches retries it, only the letters are sent again (and nothing is counted twice).
        self._committed: tuple[BatchKey, WriteResult] | None = None

    async def __call__(self, batch: Batch) -> None:
        records = [record for records in batch.values() for record in records]
        decoded = decode_records(records)

        key = _batch_key(batch)
        if self._committed is not None and self._committed[0] == key:
            result = self._committed[1]  # a retry after the dead letters failed: written already
        else:
            result = await self._write(decoded.pending, len(records))
            self._committed = (key, result)

        letters = [dead_letters.letter(item.source, item.dead) for item in decoded.invalid]
        letters += [  # a refused merge of OTLP parts: every part it stood for
            dead_letters.letter(part.source, dead_letters.rejected(r.detail))
            for r in result.rejected
            for part in r.pending.originals
        ]
        letters += [  # routed to a platform deleted since
            dead_letters.letter(item.source, dead_letters.unresolved(orphan_detail(item.row)))
            for item in result.orphaned
        ]
        await dead_letters.send_all(self._producer, self._dlq_topic, letters)
        self._committed = None

        outcomes: Counter[Outcome] = Counter(result.outcomes.values())
        outcomes["duplicate"] += result.duplicates
        outcomes["stale"] += result.stale
        self._count(len(records), outcomes, letters)
        self._metrics.cancelled.inc(len(result.cancelled))
        self._metrics.dlq_resolved.inc(result.resolved)
        if result.cancelled:
            log.info("cancelled traces not stored", traces=len(result.cancelled))
        refused = {part.row.id for r in result.rejected for part in r.pending.originals}
        refused.update(item.row.id for item in (*result.orphaned, *result.cancelled))
        self._tracker.note_all(
            (item.row.api_key_id, item.row.received_at)
            for item in decoded.pending
            if not refused or item.row.id not in refused
        )

    async def _write(self, pending: list[Pending], size: int) -> WriteResult:
        if not pending:  # only undecodable records: nothing to wait for the database for
            return WriteResult()
        started = time.perf_counter()
        try:
            result = await write_rows(await self._db.connection(), pending)
        except Exception as exc:
            self._metrics.database_errors.inc()
            await self._db.failed(exc)
            log.error(
                "database write failed; the batch will be retried, offsets stay uncommitted",
                records=size,
                error=repr(exc),
                database_down_seconds=self._db.down_for(),
            )
            raise
        self._metrics.flush_latency.observe(time.perf_counter() - started)
        return result

    def _count(self, size: int, outcomes: Counter[Outcome], letters: list[dlq.Letter]) -> None:
        m = self._metrics
        m.batch_size.observe(size)
        m.stored.inc(outcomes["stored"])
        m.replaced.inc(outcomes["replaced"])
        m.merged.inc(outcomes["merged"])
        m.duplicates.inc(outcomes["duplicate"])
        m.stale.inc(outcomes["stale"])
        for item in letters:
            m.dead_lettered.labels(item.reason).inc()
        # dict(): mypy takes no Counter of Literal keys after ** (a Counter's key type is invariant)
        log.debug("batch stored", records=size, dead_lettered=len(letters), **dict(outcomes))
