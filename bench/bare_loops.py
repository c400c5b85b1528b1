"""The bare baselines of the worker benchmarks, as processes of their own (measured like the workers).

    python -m bench.bare_loops relay SOURCE DEST GROUP   # consume → produce each record → gather acks → commit
    python -m bench.bare_loops copy SOURCE TABLE GROUP   # consume → COPY (id, payload) → COMMIT → commit
    BARE_WORKER_FETCH=1 python -m bench.bare_loops ...   # with the workers' fetch tuning (WORKER_FETCH)

Both use the workers' consumer and producer settings (shared.runtime.kafka), the same loop
(shared.runtime.worker.run_batches) and batch sizes (ROUTER_BATCH_MAX, STORAGE_BATCH_MAX), and
nothing else (by default aiokafka's fetch defaults; ``BARE_WORKER_FETCH=1``: the workers' own): no decoding, no decision, no upsert. ``copy`` writes each record's value as a
``jsonb`` payload with a fresh id into ``TABLE`` (created if missing). They run until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

import psycopg

from shared.runtime.kafka import WORKER_FETCH, make_consumer, make_producer
from shared.runtime.settings import Settings, libpq_url
from shared.runtime.worker import Batch, run_batches, stop_on_signals


def _fetch() -> dict[str, Any]:
    return WORKER_FETCH if os.environ.get("BARE_WORKER_FETCH") == "1" else {}


async def relay(settings: Settings, source: str, dest: str, group: str) -> None:
    stop = stop_on_signals()
    consumer = make_consumer(settings, source, group_id=group, **_fetch())
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()

    async def step(batch: Batch) -> None:
        futures = [
            await producer.send(dest, r.value, key=r.key) for records in batch.values() for r in records
        ]
        await asyncio.gather(*futures)

    try:
        await run_batches(consumer, step, stop, max_records=settings.router_batch_max, name="bare-relay")
    finally:
        await consumer.stop()
        await producer.stop()


async def copy(settings: Settings, source: str, table: str, group: str) -> None:
    stop = stop_on_signals()
    conn = await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), application_name="bare_copy"
    )
    await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id uuid PRIMARY KEY, payload jsonb NOT NULL)")
    await conn.commit()
    consumer = make_consumer(settings, source, group_id=group, **_fetch())
    await consumer.start()

    async def step(batch: Batch) -> None:
        async with conn.cursor() as cur, cur.copy(f"COPY {table} (id, payload) FROM STDIN") as out:
            for records in batch.values():
                for record in records:
                    await out.write_row((uuid.uuid4(), record.value.decode()))
        await conn.commit()

    try:
        await run_batches(consumer, step, stop, max_records=settings.storage_batch_max, name="bare-copy")
    finally:
        await consumer.stop()
        await conn.close()


def main() -> int:
    mode, source, target, group = sys.argv[1:5]
    settings = Settings.from_env()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run((relay if mode == "relay" else copy)(settings, source, target, group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
