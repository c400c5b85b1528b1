"""``python -m storage_worker``: settings → logging → Kafka → store batches → flush last-used times;
beside it, index the dead-letter topic.

Flow: traces.routed ─getmany→ step.StoreStep (decode → write: admit, collapse, upsert, resolve
      dead letters → dead letters) ─commit→
      traces.dlq ─getmany→ dlq_index.IndexStep (describe → INSERT … ON CONFLICT DO NOTHING) ─commit→
      every LAST_USED_FLUSH_SECONDS: last_used.flush (api_keys.last_used_at)
      every 10 minutes, when TRACE_RETENTION_DAYS is set: retention.expire_every (old traces deleted)
The two consume loops are two stages with consumer groups of their own (``<prefix>storage_worker``,
``<prefix>dlq_index_worker``) and a database connection each; metrics on one port.
SIGTERM: the batch in hand of each loop is finished and committed, last-used times are flushed,
then exit. Either loop ending (or failing) stops the other.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable

import structlog

from shared.runtime.settings import Settings, libpq_url
from shared.runtime.worker import Stage, consume, run_service, stop_on_signals
from storage_worker.database import Database
from storage_worker.dlq_index import IndexStep
from storage_worker.last_used import LastUsedTracker, final_flush, flush_every
from storage_worker.metrics import StorageMetrics
from storage_worker.retention import expire_every
from storage_worker.step import StoreStep
from storage_worker.write import create_stage

log = structlog.get_logger("storage_worker")


async def _until_done(loop: Awaitable[None], stop: asyncio.Event) -> None:
    """One consume loop; when it ends, for whatever reason, the other is told to stop too."""
    try:
        await loop
    finally:
        stop.set()


async def run(settings: Settings) -> None:
    stop = stop_on_signals()
    metrics = StorageMetrics()
    url = libpq_url(settings.database_url)
    traces_db = Database(url, name="storage_worker", setup=create_stage)
    keys_db = Database(url, name="storage_worker last_used")
    index_db = Database(url, name="storage_worker dlq_index")
    tracker = LastUsedTracker()
    stage = Stage(
        "storage", lambda t: t.routed, settings.storage_batch_max, metrics.registry,
        settings.storage_metrics_port, metrics.lag,
    )  # fmt: skip
    # Its metrics are in the same registry, served by the first stage's server (port 0: none of its own).
    index_stage = Stage(
        "dlq_index", lambda t: t.dlq, settings.storage_batch_max, metrics.registry, 0, metrics.dlq_index_lag,
        fetch={},  # mostly idle: aiokafka's fetch wait (500 ms), not the hot stages' 50 ms
    )  # fmt: skip
    flusher = asyncio.create_task(
        flush_every(tracker, keys_db, settings.last_used_flush_seconds, stop), name="last-used"
    )
    expirer = asyncio.create_task(expire_every(url, settings.trace_retention_days, stop), name="retention")
    try:
        async with asyncio.TaskGroup() as loops:
            loops.create_task(
                _until_done(
                    consume(
                        settings,
                        stage,
                        stop,
                        lambda producer, topics: StoreStep(traces_db, producer, topics.dlq, tracker, metrics),
                    ),
                    stop,
                ),
                name="store",
            )
            loops.create_task(
                _until_done(
                    consume(settings, index_stage, stop, lambda _p, _t: IndexStep(index_db, metrics)), stop
                ),
                name="dlq-index",
            )
    finally:
        stop.set()
        await flusher
        await expirer
        await final_flush(tracker, keys_db)
        await traces_db.close()
        await keys_db.close()
        await index_db.close()
        log.info("stopped")


def main() -> int:
    return run_service("storage_worker", run)


if __name__ == "__main__":
    sys.exit(main())
