"""``python -m storage_worker``: settings → logging → Kafka → store batches → flush last-used times.

Flow: traces.routed ─getmany→ step.StoreStep (decode → write: admit, collapse, upsert → dead
      letters) ─commit→
      every LAST_USED_FLUSH_SECONDS: last_used.flush (api_keys.last_used_at)
SIGTERM: the batch in hand is finished and committed, last-used times are flushed, then exit.
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from shared.runtime.settings import Settings, libpq_url
from shared.runtime.worker import Stage, consume, run_service, stop_on_signals
from storage_worker.database import Database
from storage_worker.last_used import LastUsedTracker, final_flush, flush_every
from storage_worker.metrics import StorageMetrics
from storage_worker.step import StoreStep
from storage_worker.write import create_stage

log = structlog.get_logger("storage_worker")


async def run(settings: Settings) -> None:
    stop = stop_on_signals()
    metrics = StorageMetrics()
    url = libpq_url(settings.database_url)
    traces_db = Database(url, name="storage_worker", setup=create_stage)
    keys_db = Database(url, name="storage_worker last_used")
    tracker = LastUsedTracker()
    stage = Stage(
        "storage", lambda t: t.routed, settings.storage_batch_max, metrics.registry,
        settings.storage_metrics_port, metrics.lag,
    )  # fmt: skip
    flusher = asyncio.create_task(
        flush_every(tracker, keys_db, settings.last_used_flush_seconds, stop), name="last-used"
    )
    try:
        await consume(
            settings,
            stage,
            stop,
            lambda producer, topics: StoreStep(traces_db, producer, topics.dlq, tracker, metrics),
        )
    finally:
        stop.set()
        await flusher
        await final_flush(tracker, keys_db)
        await traces_db.close()
        await keys_db.close()
        log.info("stopped")


def main() -> int:
    return run_service("storage_worker", run)


if __name__ == "__main__":
    sys.exit(main())
