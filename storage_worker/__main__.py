"""``python -m storage_worker``: settings → logging → Kafka → store batches → flush last-used times.

Flow: traces.routed ─getmany→ step.StoreStep (decode → collapse → write → dead letters) ─commit→
      every LAST_USED_FLUSH_SECONDS: last_used.flush (api_keys.last_used_at)
SIGTERM: the batch in hand is finished and committed, last-used times are flushed, then exit.
"""

from __future__ import annotations

import asyncio
import sys

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.runtime.settings import Settings, libpq_url
from shared.runtime.worker import (
    metrics_server,
    run_batches,
    run_service,
    start_clients,
    stop_on_signals,
    topics_when_reachable,
)
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
    consumer: AIOKafkaConsumer | None = None
    producer: AIOKafkaProducer | None = None
    flusher: asyncio.Task[None] | None = None

    def ready() -> bool:
        return consumer is not None and bool(consumer.assignment())

    async with metrics_server(metrics.registry, settings.metrics_host, settings.storage_metrics_port, ready):
        try:
            topics = await topics_when_reachable(settings, stop)
            if topics is None:
                return
            group = f"{settings.kafka_topic_prefix}storage_worker"
            clients = await start_clients(settings, topics.routed, group, stop)
            if clients is None:
                return
            producer, consumer = clients
            log.info("storing", source=topics.routed, dlq=topics.dlq, group=group)
            flusher = asyncio.create_task(
                flush_every(tracker, keys_db, settings.last_used_flush_seconds, stop), name="last-used"
            )
            step = StoreStep(traces_db, producer, topics.dlq, tracker, metrics)
            await run_batches(
                consumer,
                step,
                stop,
                max_records=settings.storage_batch_max,
                lag=metrics.lag,
                name="storage",
            )
        finally:
            log.info("stopping: last batch done and committed")
            stop.set()
            if flusher is not None:
                await flusher
                await final_flush(tracker, keys_db)
            if consumer is not None:
                await consumer.stop()
            if producer is not None:
                await producer.stop()
            await traces_db.close()
            await keys_db.close()
            log.info("stopped")


def main() -> int:
    return run_service("storage_worker", run)


if __name__ == "__main__":
    sys.exit(main())
