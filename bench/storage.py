"""Storage benchmark: CPU per trace of the storage worker beside a plain COPY of the same rows.

    .venv/bin/python -m bench.storage [--count 20000] [--batch 500] [--rate 0] [--no-worker] [--profile]

Uses the stack of ``.devstack/env`` (``make bench`` brings it up first; variables already in the
environment win). In one run, with ``--count`` routed traces of ~1 KB for a fresh bench project
(every fourth with an external id), CPU of the Python process and of its PostgreSQL backend
(``/proc``, bench/procstat.py) per trace for:

1. in-process baseline: a plain ``COPY`` of the already-decoded rows into a scratch table shaped
   like ``traces`` (same columns, defaults and indexes), ``--batch`` rows a transaction — the
   floor any write path pays;
2. in-process, the write path: routed Kafka record bytes → decode → collapse → COPY into the
   staging table → ``INSERT ... ON CONFLICT`` → commit (exactly the worker's code), and a replay
   of the same records (every row a duplicate: what a re-delivery costs);
3. unless ``--no-worker``, processes fed from Kafka while they run (bench/worker_cpu.py):
   ``python -m bench.bare_loops copy`` (consume → COPY → COMMIT → commit, the baseline) and
   ``python -m storage_worker`` as the pipeline runs it. ``--rate`` paces the records (0: as fast
   as the bench produces); ``--profile`` adds a storage worker run under py-spy, saved as
   ``bench/results/storage-worker.folded`` (its CPU figures are not used).

Writes ``bench/results/storage.json``. The bench project (and its traces) and the scratch tables
are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from bench.ingest import load_env_file, trace_body
from bench.procstat import SELF, CpuMeter
from bench.worker_cpu import ConsumerRun, Values, run_consumer, start_bare, stop
from shared import registry
from shared.contracts.envelope import Hints, RawEnvelope, encode, message_key, routed
from shared.contracts.ids import uuid7
from shared.devstack.pipeline import start_worker
from shared.runtime.kafka import ensure_topics
from shared.runtime.settings import Settings, libpq_url
from storage_worker.last_used import LastUsedTracker
from storage_worker.rows import TraceRow, decode_records
from storage_worker.sql import COLUMNS
from storage_worker.write import create_stage, write_rows
from tests.storage_helpers import consumer_record

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

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


async def backend_pid(conn: Conn, application: str) -> int:
    """The newest PostgreSQL backend of ``application`` (a worker's connection), by its name."""
    cur = await conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY backend_start DESC LIMIT 1",
        (application,),
    )
    found = await cur.fetchone()
    await conn.commit()
    if found is None:
        raise SystemExit(f"no PostgreSQL backend named {application!r}")
    return int(found[0])


async def bare_copy(
    settings: Settings, conn: Conn, warmup: Values, values: Values, rate: float
) -> ConsumerRun:
    """``bench.bare_loops copy``: consume → COPY → COMMIT → commit, as a process (+ its backend)."""
    own = prefixed(settings, "bare")
    topics = await ensure_topics(own)
    group, table = f"{own.kafka_topic_prefix}bare", f"bench_bare_{time.time_ns()}"
    proc = start_bare(own, "copy", topics.routed, table, group, worker_fetch=True)

    async def backend() -> dict[str, int]:
        return {"postgres": await backend_pid(conn, "bare_copy")}

    try:
        return await run_consumer(
            own, "bare", proc, group, topics.routed, warmup, values, rate=rate, extra_pids=backend
        )
    finally:
        stop(proc)
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.commit()


async def worker(
    settings: Settings, conn: Conn, warmup: Values, values: Values, rate: float, profile: Path | None = None
) -> ConsumerRun:
    """``python -m storage_worker`` as the pipeline runs it (+ its PostgreSQL backend)."""
    own = prefixed(settings, "storage")
    topics = await ensure_topics(own)
    logs = ROOT / ".devstack" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    service = start_worker("storage_worker", own, logs, LOG_LEVEL="warning")

    async def backend() -> dict[str, int]:
        return {"postgres": await backend_pid(conn, "storage_worker")}

    try:
        run = await run_consumer(
            own, "storage", service.proc, f"{own.kafka_topic_prefix}storage_worker", topics.routed,
            warmup, values, rate=rate, extra_pids=backend, profile=profile,
        )  # fmt: skip
        _check_metrics(service.url)
        return run
    finally:
        service.stop()


def prefixed(settings: Settings, what: str) -> Settings:
    return msgspec.structs.replace(settings, kafka_topic_prefix=f"bench{time.time_ns()}-{what}.")


def _check_metrics(url: str) -> None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "storage_traces_stored_total" in text


async def timed(conn: Conn, run: Callable[[], Awaitable[Any]]) -> tuple[float, dict[str, float], Any]:
    """Seconds and CPU seconds of this process and of ``conn``'s backend while ``run`` runs."""
    meter = CpuMeter({"bench": SELF, "postgres": conn.info.backend_pid}).start()
    started = time.perf_counter()
    result = await run()
    seconds = time.perf_counter() - started
    return seconds, meter.stop().used, result


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=None, help="rows per transaction (STORAGE_BATCH_MAX)")
    parser.add_argument(
        "--rate", type=float, default=0, help="records/s produced to the processes (0: unpaced)"
    )
    parser.add_argument("--no-worker", action="store_true", help="skip the process runs")
    parser.add_argument("--profile", action="store_true", help="a py-spy profile of the storage worker")
    args = parser.parse_args()
    load_env_file()
    settings = Settings.from_env()
    size = args.batch or settings.storage_batch_max
    body = trace_body()
    url = libpq_url(settings.database_url)
    n = args.count

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        tenant = await bench_tenant(admin, settings.key_pepper)
    conn = await psycopg.AsyncConnection.connect(url)
    processes: dict[str, ConsumerRun] = {}
    try:
        await create_stage(conn)
        values = routed_values(tenant, n, body)
        decoded = decode_records(consumer_record(v, key=k) for k, v in values)
        rows = [p.row for p in decoded.pending]

        await write_path(conn, values[:size], size)  # warm-up: connection, plans, caches
        await conn.execute("DELETE FROM traces WHERE project_id = %s", (tenant.project_id,))
        await conn.commit()

        base, base_cpu, _ = await timed(conn, lambda: plain_copy(conn, rows, size))
        real, real_cpu, (_, outcomes) = await timed(conn, lambda: write_path(conn, values, size))
        assert outcomes == {"stored": n}, outcomes
        replay, replay_cpu, (_, replayed) = await timed(conn, lambda: write_path(conn, values, size))
        assert replayed == {"duplicate": n}, replayed
        if not args.no_worker:
            warmup = routed_values(tenant, 500, body)
            fresh = routed_values(tenant, n, body)
            processes["bare"] = await bare_copy(settings, conn, warmup, fresh, args.rate)
            processes["storage"] = await worker(
                settings, conn, routed_values(tenant, 500, body), routed_values(tenant, n, body), args.rate
            )
            if args.profile:
                await worker(
                    settings, conn, routed_values(tenant, 500, body), routed_values(tenant, n, body),
                    args.rate, RESULTS / "storage-worker.folded",
                )  # fmt: skip
    finally:
        await conn.rollback()
        await conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
        await conn.commit()
        await conn.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await registry.delete_project(admin, tenant.project_id)

    def ms(cpu: dict[str, float], key: str) -> float:
        return cpu[key] * 1000 / n

    paced = f"{args.rate:,.0f}/s" if args.rate else "unpaced"
    print(f"\nstorage benchmark: {n} routed traces, {len(body)} B bodies, {size} rows per transaction "
          f"in-process; processes fed {paced}; {os.cpu_count()} cores\n")  # fmt: skip
    print("| path | CPU ms per trace: Python process | its PostgreSQL backend | rows/s |")
    print("|---|---|---|---|")
    print(
        f"| plain COPY into a scratch copy of `traces` (in-process baseline) | {ms(base_cpu, 'bench'):.4f} | "
        f"{ms(base_cpu, 'postgres'):.4f} | {n / base:,.0f} |"
    )
    print(
        f"| write path in-process: decode → collapse → COPY staging → INSERT … ON CONFLICT | "
        f"{ms(real_cpu, 'bench'):.4f} | {ms(real_cpu, 'postgres'):.4f} | {n / real:,.0f} |"
    )
    print(f"| replay of the same records (all duplicates) | {ms(replay_cpu, 'bench'):.4f} | "
          f"{ms(replay_cpu, 'postgres'):.4f} | {n / replay:,.0f} |")  # fmt: skip
    labels = {"bare": "process: bare consume → COPY → COMMIT → commit (baseline)",
              "storage": "process: `python -m storage_worker`"}  # fmt: skip
    for name, run in processes.items():
        print(f"| {labels[name]} | {run.cpu_ms[name]:.4f} | {run.cpu_ms['postgres']:.4f} | "
              f"{run.records / run.seconds:,.0f} |")  # fmt: skip
    copy_ms, write_ms = ms(base_cpu, "bench"), ms(real_cpu, "bench")
    print(f"\nCPU ratio plain COPY / write path (in-process, Python side): {copy_ms / write_ms:.2f}")
    summary: dict[str, Any] = {
        "count": n,
        "body_bytes": len(body),
        "rows_per_transaction": size,
        "rate_produced": args.rate,
        "copy_rate": n / base,
        "write_path_rate": n / real,
        "replay_rate": n / replay,
        "ratio": (n / real) / (n / base),
        "copy_cpu_ms": {k: v * 1000 / n for k, v in base_cpu.items()},
        "write_path_cpu_ms": {k: v * 1000 / n for k, v in real_cpu.items()},
        "replay_cpu_ms": {k: v * 1000 / n for k, v in replay_cpu.items()},
        "cpu_ratio_copy_over_write_path": copy_ms / write_ms,
        "processes": {name: run.row() for name, run in processes.items()},
    }
    if "storage" in processes:
        summary["worker_rate"] = processes["storage"].records / processes["storage"].seconds
        summary["worker_cpu_ms"] = processes["storage"].cpu_ms["storage"]
        summary["bare_cpu_ms"] = processes["bare"].cpu_ms["bare"]
        print(f"CPU ratio storage worker / bare consume → COPY (processes): "
              f"{summary['worker_cpu_ms'] / summary['bare_cpu_ms']:.2f}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "storage.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
