"""Storage benchmark: the storage worker's write path against a plain COPY of the same rows.

    .venv/bin/python -m bench.storage [--count 20000] [--batch 500] [--no-worker]

Uses the stack of ``.devstack/env`` (``make bench`` brings it up first; variables already in the
environment win). In one run, with ``--count`` routed traces of ~1 KB for a fresh bench project,
in batches of ``--batch`` rows, one transaction each:

1. baseline: a plain ``COPY`` of the already-decoded rows into a scratch table shaped like
   ``traces`` (same columns, defaults and indexes) — the floor any write path pays;
2. the write path: routed Kafka record bytes → decode → collapse → COPY into the staging table →
   ``INSERT ... ON CONFLICT`` → commit (storage_worker.rows/upsert/write, exactly the worker's code);
3. a replay of the same records (every row a duplicate: what a re-delivery costs);
4. unless ``--no-worker``: ``python -m storage_worker`` end to end — a second set of records
   produced to a fresh topic prefix first, timed from the first stored row to the last.

Prints the rates and the ratio write path / COPY; writes ``bench/results/storage.json``.
The bench project (and its traces) and the scratch table are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from bench.ingest import load_env_file, trace_body
from shared import registry
from shared.contracts.envelope import Hints, RawEnvelope, encode, message_key, routed
from shared.contracts.ids import uuid7
from shared.devstack.pipeline import free_port
from shared.registry.validation import one
from shared.runtime.kafka import ensure_topics, make_producer
from shared.runtime.settings import Settings, libpq_url
from storage_worker.last_used import LastUsedTracker
from storage_worker.rows import TraceRow, decode_records
from storage_worker.sql import COLUMNS
from storage_worker.write import create_stage, write_rows
from tests.storage_helpers import consumer_record

ROOT = Path(__file__).resolve().parent.parent

SCRATCH = "bench_storage_scratch"
Conn = psycopg.AsyncConnection[Any]


class BenchTenant(msgspec.Struct, frozen=True):
    project_id: uuid.UUID
    platform_id: uuid.UUID
    key_id: uuid.UUID


async def bench_tenant(conn: Conn, pepper: str) -> BenchTenant:
    project = await registry.create_project(conn, f"bench-storage-{time.time_ns()}")
    platform = await registry.create_platform(conn, project.id, "http", "http_api")
    key = await registry.create_key(conn, pepper, project.id, "bench", [platform.id])
    return BenchTenant(project.id, platform.id, key.id)


def routed_values(tenant: BenchTenant, count: int, body: bytes) -> list[tuple[bytes, bytes]]:
    """``count`` encoded routed envelopes (key, value); every fourth one carries an external id."""
    out = []
    for i in range(count):
        trace_id = uuid7()
        raw = RawEnvelope(
            trace_id=trace_id,
            received_at=dt.datetime.now(dt.UTC),
            project_id=tenant.project_id,
            key_id=tenant.key_id,
            key_restricted=True,
            key_scope=[tenant.platform_id],
            external_id=f"bench-{trace_id}" if i % 4 == 0 else None,
            shape="spans",
            platform_id=None,
            hints=Hints(workflow_id="bench"),
            body=msgspec.Raw(body),
        )
        envelope = routed(raw, tenant.platform_id, "single_candidate")
        out.append((message_key(raw.project_id, raw.external_id, trace_id), encode(envelope)))
    return out


def batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def plain_copy(conn: Conn, rows: list[TraceRow], size: int) -> float:
    await conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
    await conn.execute(f"CREATE TABLE {SCRATCH} (LIKE traces INCLUDING ALL)")
    await conn.commit()
    sql = f"COPY {SCRATCH} ({', '.join(COLUMNS)}) FROM STDIN"
    started = time.perf_counter()
    for part in batches(rows, size):
        async with conn.transaction():
            async with conn.cursor() as cur:
                async with cur.copy(sql) as copy:
                    for r in part:
                        await copy.write_row(
                            (r.id, r.project_id, r.platform_id, r.api_key_id, r.external_id, r.body_shape,
                             r.payload, r.metadata, r.external_metadata, r.received_at)
                        )  # fmt: skip
    return time.perf_counter() - started


async def write_path(
    conn: Conn, values: list[tuple[bytes, bytes]], size: int
) -> tuple[float, dict[str, int]]:
    """The worker's step minus Kafka: ConsumerRecords (built beforehand, as aiokafka hands them
    over) → decode → collapse → write and commit → last-used tracker."""
    tracker = LastUsedTracker()
    outcomes: dict[str, int] = {}
    parts = [
        [consumer_record(value, key=key, offset=offset) for key, value in part]
        for offset, part in enumerate(batches(values, size))
    ]
    started = time.perf_counter()
    for records in parts:
        decoded = decode_records(records)
        result = await write_rows(conn, decoded.pending)
        assert not decoded.invalid and not result.rejected
        for outcome in result.outcomes.values():
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        tracker.note_all((p.row.api_key_id, p.row.received_at) for p in decoded.pending)
    return time.perf_counter() - started, outcomes


async def produce(settings: Settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for part in batches(values, 2000):
            await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in part])
    finally:
        await producer.stop()


async def worker_end_to_end(
    settings: Settings, conn: Conn, tenant: BenchTenant, values: list[tuple[bytes, bytes]]
) -> float:
    """Seconds from the first row the worker stored to the last (records produced beforehand)."""
    prefix = f"bench{time.time_ns()}."
    topics = await ensure_topics(msgspec.structs.replace(settings, kafka_topic_prefix=prefix))
    await produce(settings, topics.routed, values)
    await conn.execute("DELETE FROM traces WHERE project_id = %s", (tenant.project_id,))
    await conn.commit()
    port = free_port()
    env = os.environ | {
        "KAFKA_TOPIC_PREFIX": prefix,
        "STORAGE_METRICS_PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
    }
    worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "storage_worker", env=env, cwd=ROOT)
    try:
        first: float | None = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT count(*) FROM traces WHERE project_id = %s", (tenant.project_id,)
            )
            stored = one(await cur.fetchone())[0]
            await conn.commit()
            now = time.perf_counter()
            if stored and first is None:
                first = now
            if stored >= len(values):
                assert first is not None
                _check_metrics(port)
                return now - first
            await asyncio.sleep(0.02)
        raise SystemExit("the storage worker did not store every record in time")
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)


def _check_metrics(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "storage_traces_stored_total" in text


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=None, help="rows per transaction (STORAGE_BATCH_MAX)")
    parser.add_argument("--no-worker", action="store_true", help="skip the end-to-end worker run")
    args = parser.parse_args()
    load_env_file()
    settings = Settings.from_env()
    size = args.batch or settings.storage_batch_max
    body = trace_body()
    url = libpq_url(settings.database_url)

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        tenant = await bench_tenant(admin, settings.key_pepper)
    conn = await psycopg.AsyncConnection.connect(url)
    try:
        await create_stage(conn)
        values = routed_values(tenant, args.count, body)
        decoded = decode_records(consumer_record(v, key=k) for k, v in values)
        rows = [p.row for p in decoded.pending]

        await write_path(conn, values[:size], size)  # warm-up: connection, plans, caches
        await conn.execute("DELETE FROM traces WHERE project_id = %s", (tenant.project_id,))
        await conn.commit()

        base = await plain_copy(conn, rows, size)
        real, outcomes = await write_path(conn, values, size)
        assert outcomes == {"stored": args.count}, outcomes
        replay, replayed = await write_path(conn, values, size)
        assert replayed == {"duplicate": args.count}, replayed
        worker = None
        if not args.no_worker:
            worker = await worker_end_to_end(settings, conn, tenant, routed_values(tenant, args.count, body))
    finally:
        await conn.rollback()
        await conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
        await conn.commit()
        await conn.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await registry.delete_project(admin, tenant.project_id)

    n = args.count
    base_rate, real_rate, replay_rate = n / base, n / real, n / replay
    print(f"\nstorage benchmark: {n} routed traces, {len(body)} B bodies, {size} rows per transaction, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print("| path | rows/s | seconds |")
    print("|---|---|---|")
    print(f"| plain COPY into a scratch copy of `traces` (baseline) | {base_rate:,.0f} | {base:.2f} |")
    print(
        f"| write path: decode → collapse → COPY staging → INSERT … ON CONFLICT | {real_rate:,.0f} | {real:.2f} |"
    )
    print(f"| replay of the same records (all duplicates) | {replay_rate:,.0f} | {replay:.2f} |")
    if worker is not None:
        print(f"| `python -m storage_worker`, Kafka → PostgreSQL | {n / worker:,.0f} | {worker:.2f} |")
    print(f"\nratio write path / plain COPY: {real_rate / base_rate:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "storage.json").write_text(
        json.dumps(
            {
                "count": n,
                "body_bytes": len(body),
                "rows_per_transaction": size,
                "copy_rate": base_rate,
                "write_path_rate": real_rate,
                "replay_rate": replay_rate,
                "worker_rate": None if worker is None else n / worker,
                "ratio": real_rate / base_rate,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
