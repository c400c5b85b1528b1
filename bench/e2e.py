"""End-to-end benchmark: traces through the whole running pipeline against a bare pipeline.

    .venv/bin/python -m bench.e2e [--count 20000] [--batch 100]

Uses the stack of ``.devstack/env``. With a topic prefix and project of its own:

1. baseline, in one process: aiokafka produces the same bodies to a scratch topic, consumes them
   back and COPYs them into a scratch table, one commit per 500 — the floor any Kafka →
   PostgreSQL pipeline pays, with no HTTP, no auth, no routing, no upsert;
2. the pipeline: ``python -m ingest_api``, ``router_worker`` and ``storage_worker`` as processes;
   the traces are POSTed to the batch endpoint (``--batch`` per request, 4 in flight) and timed
   from the first request to the last row stored.

Prints both rates, the ratio and each process's peak RSS; writes ``bench/results/e2e.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp
import msgspec
import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.ingest import load_env_file, trace_body
from shared.devstack.pipeline import Service, make_tenant, start_ingest, start_worker
from shared.runtime.kafka import ensure_topics, make_producer
from shared.runtime.settings import Settings, libpq_url

ROOT = Path(__file__).resolve().parent.parent


def vm_hwm_mib(service: Service) -> float:
    for line in Path(f"/proc/{service.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def baseline(settings: Settings, body: bytes, count: int) -> float:
    topic = f"bench-bare-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, settings.kafka_topic_partitions, 1)])
    await admin.close()
    table = f"bench_bare_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        await conn.execute(f"CREATE TABLE {table} (id uuid PRIMARY KEY, payload jsonb NOT NULL)")
    started = time.perf_counter()
    producer = make_producer(settings)
    await producer.start()
    futures = [await producer.send(topic, body, key=str(i).encode()) for i in range(count)]
    await asyncio.gather(*futures)
    await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap_servers, group_id=f"{topic}-g",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    done = 0
    async with await psycopg.AsyncConnection.connect(libpq_url(settings.database_url)) as conn:
        while done < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            async with conn.cursor() as cur, cur.copy(f"COPY {table} (id, payload) FROM STDIN") as copy:
                for record in records:
                    await copy.write_row((uuid.uuid4(), record.value.decode()))
            await conn.commit()
            await consumer.commit()
            done += len(records)
    await consumer.stop()
    elapsed = time.perf_counter() - started
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        await conn.execute(f"DROP TABLE {table}")
    return count / elapsed


async def pipeline(
    settings: Settings, body: bytes, count: int, batch: int, logs: Path
) -> tuple[float, dict[str, float]]:
    own = msgspec.structs.replace(settings, kafka_topic_prefix=f"bench-e2e-{uuid.uuid4().hex[:6]}.")
    await ensure_topics(own)
    tenant = await make_tenant(own)
    services = {
        "ingest_api": start_ingest(own, logs, LOG_LEVEL="warning"),
        "router_worker": start_worker("router_worker", own, logs, LOG_LEVEL="warning"),
        "storage_worker": start_worker("storage_worker", own, logs, LOG_LEVEL="warning"),
    }
    item = body[:-1] + b', "externalId": "%s"}'
    requests = [
        b'{"traces": [' + b",".join(item % f"e2e-{i + j}".encode() for j in range(batch)) + b"]}"
        for i in range(0, count, batch)
    ]
    try:
        started = time.perf_counter()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)
        headers = {"x-api-key": tenant.keys["n8n"], "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:

            async def sender() -> None:
                while not queue.empty():
                    data = queue.get_nowait()
                    async with session.post(
                        services["ingest_api"].url + "/public/traces/batch", data=data, headers=headers
                    ) as resp:
                        assert resp.status == 207, await resp.text()

            await asyncio.gather(*(sender() for _ in range(4)))
        async with await psycopg.AsyncConnection.connect(
            libpq_url(own.database_url), autocommit=True
        ) as conn:
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM traces WHERE project_id = %s", (tenant.project_id,)
                )
                row = await cur.fetchone()
                if row and row[0] >= count:
                    break
                await asyncio.sleep(0.05)
        rate = count / (time.perf_counter() - started)
        rss = {name: vm_hwm_mib(service) for name, service in services.items()}
        async with await psycopg.AsyncConnection.connect(
            libpq_url(own.database_url), autocommit=True
        ) as conn:
            await conn.execute("DELETE FROM projects WHERE id = %s", (tenant.project_id,))
        return rate, rss
    finally:
        for service in services.values():
            service.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    load_env_file()
    settings = Settings.from_env()
    body = trace_body()
    logs = ROOT / ".devstack" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = await baseline(settings, body, args.count)
    rate, rss = await pipeline(settings, body, args.count, args.batch, logs)
    print(
        f"\nend-to-end benchmark: {args.count} traces of {len(body)} B, batch endpoint ({args.batch} a request)\n"
    )
    print("| path | traces/s |")
    print("|---|---|")
    print(f"| bare: produce → consume → COPY → commit (baseline) | {base:,.0f} |")
    print(f"| pipeline: API → Kafka → router → Kafka → storage → PostgreSQL | {rate:,.0f} |")
    print(
        f"\nratio pipeline/bare: {rate / base:.2f}   peak RSS (MiB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
    )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "e2e.json").write_text(
        json.dumps(
            {
                "count": args.count,
                "baseline_rate": base,
                "pipeline_rate": rate,
                "ratio": rate / base,
                "peak_rss_mib": rss,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
