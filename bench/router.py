"""Router benchmark: the router's step against a bare aiokafka consume-and-produce loop.

    .venv/bin/python -m bench.router [--count 50000]

Uses the stack of ``.devstack/env``. Writes ``--count`` raw envelopes (~1 KB bodies) to a fresh
topic prefix, then drains them twice through the same consume → step → commit loop
(shared.runtime.worker.run_batches), each with its own consumer group: once with a bare step that only
re-produces every record and gathers the acks, once with router_worker.route.Router.step (decode,
resolve against the platform snapshot, re-encode, produce, gather). Prints both rates and the ratio;
writes ``bench/results/router.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import psycopg
from aiokafka import AIOKafkaProducer

from bench.ingest import load_env_file, trace_body
from router_worker.metrics import RouterMetrics
from router_worker.platforms import PlatformRegistry
from router_worker.route import Router
from shared import registry
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Tenant
from shared.runtime.kafka import ensure_topics, make_consumer, make_producer
from shared.runtime.settings import Settings, libpq_url
from shared.runtime.worker import Batch, Step, run_batches
from tests.router_helpers import produce_raw, raw_envelopes

ROOT = Path(__file__).resolve().parent.parent


async def bench_tenant(settings: Settings) -> Tenant:
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"bench-router-{time.time_ns()}")
        n8n = await registry.create_platform(
            conn, project.id, "n8n", "n8n", workflow_id=f"wf-{time.time_ns()}"
        )
        key = await registry.create_key(conn, settings.key_pepper, project.id, "bench", [n8n.id])
    tenant = Tenant(project.id, n8n.id, n8n.id, n8n.id, n8n.workflow_id or "", "")
    tenant.key_ids["n8n"] = key.id
    return tenant


async def drain(
    settings: Settings,
    topics: Topics,
    group: str,
    step_factory: Callable[[AIOKafkaProducer], Step],
    count: int,
) -> float:
    """Seconds to consume ``count`` records through ``step`` (started when the first batch arrives)."""
    consumer = make_consumer(settings, topics.raw, group_id=group, max_poll_records=1000)
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    step = step_factory(producer)
    stop = asyncio.Event()
    seen = 0
    first: float | None = None

    async def counted(batch: Batch) -> None:
        nonlocal seen, first
        first = first or time.perf_counter()
        await step(batch)
        seen += sum(len(records) for records in batch.values())
        if seen >= count:
            stop.set()

    try:
        await asyncio.wait_for(
            run_batches(consumer, counted, stop, max_records=1000, name=group), timeout=600
        )
    finally:
        await consumer.stop()
        await producer.stop()
    assert first is not None
    return time.perf_counter() - first


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=50_000)
    args = parser.parse_args()
    load_env_file()
    prefix = f"bench{time.time_ns()}."
    settings = msgspec.structs.replace(Settings.from_env(), kafka_topic_prefix=prefix)
    topics = await ensure_topics(settings)
    tenant = await bench_tenant(settings)
    await produce_raw(settings, topics, raw_envelopes(tenant, args.count, body=trace_body()))

    def bare(producer: AIOKafkaProducer) -> Step:
        async def step(batch: Batch) -> None:
            futures = [
                await producer.send(topics.routed, r.value, key=r.key)
                for records in batch.values()
                for r in records
            ]
            await asyncio.gather(*futures)

        return step

    registry = PlatformRegistry(libpq_url(settings.database_url))
    await registry.reload()

    def routing(producer: AIOKafkaProducer) -> Step:
        return Router(producer, topics, registry, RouterMetrics()).step

    base = await drain(settings, topics, f"{prefix}bare", bare, args.count)
    real = await drain(settings, topics, f"{prefix}router", routing, args.count)
    base_rate, real_rate = args.count / base, args.count / real
    print(f"\nrouter benchmark: {args.count} envelopes with ~1 KB bodies, batches of up to 1000\n")
    print("| loop | msg/s | seconds |")
    print("|---|---|---|")
    print(f"| bare consume → produce → commit (baseline) | {base_rate:,.0f} | {base:.2f} |")
    print(f"| router: decode → resolve → produce → commit | {real_rate:,.0f} | {real:.2f} |")
    print(f"\nratio router/bare: {real_rate / base_rate:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "router.json").write_text(
        json.dumps(
            {
                "count": args.count,
                "baseline_rate": base_rate,
                "router_rate": real_rate,
                "ratio": real_rate / base_rate,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
