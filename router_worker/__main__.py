"""``python -m router_worker``: settings → logging → platform registry → Kafka → route batches.

Flow: traces.raw ─getmany→ route.Router.step (decode → resolve → produce, gather acks) ─commit→
"""

from __future__ import annotations

import asyncio
import sys

from router_worker.metrics import RouterMetrics
from router_worker.platforms import PlatformRegistry
from router_worker.route import Router
from shared.runtime.settings import Settings, libpq_url
from shared.runtime.worker import Stage, consume, run_service, stop_on_signals


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
    stage = Stage(
        "router",
        lambda t: t.raw,
        settings.router_batch_max,
        metrics.registry,
        settings.router_metrics_port,
        metrics.lag,
    )
    await registry.start()
    try:
        await consume(
            settings,
            stage,
            stop,
            lambda producer, topics: Router(producer, topics, registry, metrics).step,
            prepare=lambda: _loaded(registry, stop),
            ready=lambda: registry.loaded,
        )
    finally:
        await registry.stop()


def main() -> int:
    return run_service("router_worker", run)


if __name__ == "__main__":
    sys.exit(main())
