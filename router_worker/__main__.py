"""``python -m router_worker``: settings → logging → platform registry → Kafka → route batches.

Flow: traces.raw ─getmany→ route.Router.step (decode → resolve → produce, gather acks) ─commit→
"""

from __future__ import annotations

import asyncio
import sys

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from router_worker.metrics import RouterMetrics
from router_worker.platforms import PlatformRegistry
from router_worker.route import Router
from shared.runtime.settings import Settings, libpq_url
from shared.runtime.worker import (
    metrics_server,
    run_batches,
    run_service,
    start_clients,
    stop_on_signals,
    topics_when_reachable,
)

log = structlog.get_logger("router_worker")


async def _loaded(registry: PlatformRegistry, stop: asyncio.Event) -> bool:
    """Wait for the first platform snapshot: routing against an empty one would dead-letter all."""
    waits = [asyncio.create_task(registry.first_load.wait()), asyncio.create_task(stop.wait())]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return registry.loaded


async def run(settings: Settings) -> None:
    stop = stop_on_signals()
    metrics = RouterMetrics()
    registry = PlatformRegistry(
        libpq_url(settings.database_url), refresh_interval=settings.registry_refresh_seconds
    )
    consumer: AIOKafkaConsumer | None = None

    def ready() -> bool:
        return registry.loaded and consumer is not None and bool(consumer.assignment())

    async with metrics_server(metrics.registry, settings.metrics_host, settings.router_metrics_port, ready):
        await registry.start()
        topics = await topics_when_reachable(settings, stop)
        producer: AIOKafkaProducer | None = None
        try:
            if topics is None or not await _loaded(registry, stop):
                return
            group = f"{settings.kafka_topic_prefix}router_worker"
            clients = await start_clients(settings, topics.raw, group, stop)
            if clients is None:
                return
            producer, consumer = clients
            log.info("routing", source=topics.raw, routed=topics.routed, dlq=topics.dlq, group=group)
            router = Router(producer, topics, registry, metrics)
            await run_batches(
                consumer,
                router.step,
                stop,
                max_records=settings.router_batch_max,
                lag=metrics.lag,
                name="router",
            )
        finally:
            log.info("stopping: last batch done and committed")
            if consumer is not None:
                await consumer.stop()
            if producer is not None:
                await producer.stop()
            await registry.stop()


def main() -> int:
    return run_service("router_worker", run)


if __name__ == "__main__":
    sys.exit(main())
