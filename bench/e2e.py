"""End-to-end benchmark: a sustained load through the whole running pipeline, beside a bare one.

    .venv/bin/python -m bench.e2e [--seconds 60] [--batch 100] [--connections 16] [--workers 1]

Uses the stack of ``.devstack/env``. With a topic prefix and project of its own:

1. baseline, in one process: aiokafka produces ``--count`` bodies to a scratch topic, consumes
   them back and COPYs them into a scratch table, one commit per 500 — the floor any Kafka →
   PostgreSQL pipeline pays, with no HTTP, no auth, no routing, no upsert;
2. the pipeline: ``python -m ingest_api`` (``--workers`` processes), ``router_worker`` and
   ``storage_worker`` as processes; wrk (``bench/wrk.py``) posts 1 KB traces for ``--seconds``
   to the batch endpoint (``--batch`` a request; ``--batch 0``: the single endpoint). Meanwhile:
   - lag: every 2 s, traces acknowledged (the ingest's ``ingest_traces_accepted_total``) minus
     rows stored; after the load, the time until every acknowledged trace is stored (drain);
   - freshness: every 100 ms one more trace is POSTed and ``GET /public/traces/{id}`` polled
     until it answers 200: the time from its 202 to readable;
   - CPU seconds of every process (``bench/procstat.py``) over load and drain, per stored trace:
     ingest, router, storage, and the Kafka broker and PostgreSQL beside them.

Prints the table and writes ``bench/results/e2e.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

import aiohttp
import msgspec
import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.ingest import batch_body, load_env_file, trace_body
from bench.procstat import CpuMeter, children
from bench.wrk import WrkResult, run_wrk
from shared.devstack.pipeline import Service, make_tenant, metric_value, start_ingest, start_worker
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


def stack_pids() -> dict[str, int]:
    """The local stack's Kafka broker and PostgreSQL server (their CPU is part of each trace's)."""
    found: dict[str, int] = {}
    kafka = ROOT / ".devstack" / "kafka" / "kafka.pid"
    postmaster = ROOT / ".devstack" / "postgres" / "data" / "postmaster.pid"
    if kafka.exists():
        found["kafka"] = int(kafka.read_text().split()[0])
    if postmaster.exists():
        found["postgres"] = int(postmaster.read_text().split()[0])
    return {name: pid for name, pid in found.items() if Path(f"/proc/{pid}").exists()}


def postgres_group(pid: int) -> list[int]:
    """The postmaster and its backends (each connection is a process of its own)."""
    return [pid, *children(pid)]


async def settled_count(service: Service, name: str) -> float:
    """``name``'s value once two reads half a second apart agree (no request in flight)."""
    value = metric_value(service, name)
    while True:
        await asyncio.sleep(0.5)
        again = metric_value(service, name)
        if again == value:
            return value
        value = again


def offered_delay_ms(rate: float, connections: int, per_request: int) -> float:
    """The wait before each request that makes ``connections`` offer about ``rate`` traces/s
    (slightly less: each request's own latency adds to the wait)."""
    return connections * per_request / rate * 1000 if rate > 0 else 0.0


async def stored_count(conn: psycopg.AsyncConnection, project_id: uuid.UUID) -> int:
    cur = await conn.execute("SELECT count(*) FROM traces WHERE project_id = %s", (project_id,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def freshness_sampler(
    url: str, key: str, body: bytes, stop: asyncio.Event, samples: list[float], failures: list[str]
) -> None:
    """Every 100 ms one trace: POST, then poll GET /public/traces/{id} until 200 (bounded)."""
    headers = {"x-api-key": key, "Content-Type": "application/json"}

    async def follow(session: aiohttp.ClientSession) -> None:
        async with session.post(url + "/public/traces", data=body, headers=headers) as resp:
            if resp.status != 202:
                failures.append(f"POST {resp.status}")
                return
            trace_id = (await resp.json())["data"]["id"]
        acked = time.perf_counter()
        deadline = acked + 30
        while time.perf_counter() < deadline:
            async with session.get(url + f"/public/traces/{trace_id}", headers={"x-api-key": key}) as got:
                await got.read()
                if got.status == 200:
                    samples.append(time.perf_counter() - acked)
                    return
            await asyncio.sleep(0.01)
        failures.append(f"{trace_id} not readable within 30 s")

    async with aiohttp.ClientSession() as session:
        pending: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            task = asyncio.create_task(follow(session))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(0.1)
        if pending:
            await asyncio.wait(pending, timeout=35)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def pipeline(settings: Settings, args: argparse.Namespace, logs: Path) -> dict:
    own = msgspec.structs.replace(settings, kafka_topic_prefix=f"bench-e2e-{uuid.uuid4().hex[:6]}.")
    await ensure_topics(own)
    tenant = await make_tenant(own)
    services = {
        "ingest": start_ingest(own, logs, LOG_LEVEL="warning", INGEST_WORKERS=str(args.workers)),
        "router": start_worker("router_worker", own, logs, LOG_LEVEL="warning"),
        "storage": start_worker("storage_worker", own, logs, LOG_LEVEL="warning"),
    }
    key = tenant.keys["n8n"]
    one = trace_body()
    per_request = max(1, args.batch)
    path, data = (
        ("/public/traces/batch", batch_body(one, args.batch)) if args.batch else ("/public/traces", one)
    )
    url = services["ingest"].url
    pids: dict[str, int | list[int]] = {
        "ingest": [services["ingest"].proc.pid, *children(services["ingest"].proc.pid)],
        "router": services["router"].proc.pid,
        "storage": services["storage"].proc.pid,
    }
    for name, pid in stack_pids().items():
        pids[name] = postgres_group(pid) if name == "postgres" else pid
    try:
        run_wrk(url + path, data, api_key=key, connections=4, seconds=3)  # warm-up
        async with await psycopg.AsyncConnection.connect(
            libpq_url(own.database_url), autocommit=True
        ) as conn:
            deadline = time.monotonic() + 60
            # wrk stops without waiting for its last requests, which are answered (and counted)
            # all the same: the starting count is taken once the counter stands still.
            accepted0 = await settled_count(services["ingest"], "ingest_traces_accepted_total")
            while await stored_count(conn, tenant.project_id) < accepted0 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            stored0 = await stored_count(conn, tenant.project_id)
            meter = CpuMeter(pids).start()
            started = time.perf_counter()
            stop = asyncio.Event()
            fresh: list[float] = []
            failures: list[str] = []
            sampler = asyncio.create_task(freshness_sampler(url, key, one, stop, fresh, failures))
            load = asyncio.create_task(
                asyncio.to_thread(
                    run_wrk,
                    url + path,
                    data,
                    api_key=key,
                    connections=args.connections,
                    seconds=args.seconds,
                    delay_ms=offered_delay_ms(args.rate, args.connections, per_request),
                )
            )
            lag: list[tuple[float, float]] = []
            while not load.done():
                await asyncio.wait([load], timeout=2)
                accepted = metric_value(services["ingest"], "ingest_traces_accepted_total") - accepted0
                lag.append(
                    (
                        time.perf_counter() - started,
                        accepted - (await stored_count(conn, tenant.project_id) - stored0),
                    )
                )
            result: WrkResult = await load
            load_seconds = time.perf_counter() - started
            stop.set()
            await sampler
            # One ingest process: its counter is exact (wrk does not count requests still in flight
            # when it stops, which are answered and stored all the same). Several: each has its own
            # counter, so wrk's count is the figure (a lower bound by the requests in flight).
            accepted = (
                await settled_count(services["ingest"], "ingest_traces_accepted_total") - accepted0
                if args.workers == 1
                else result.ok * per_request + len(fresh) + len(failures)
            )
            stored_at_end = await stored_count(conn, tenant.project_id) - stored0
            drain_deadline = time.monotonic() + 180
            stored = stored_at_end
            while stored < accepted and time.monotonic() < drain_deadline:
                await asyncio.sleep(0.1)
                stored = await stored_count(conn, tenant.project_id) - stored0
            total_seconds = time.perf_counter() - started
            meter.stop()
            await conn.execute("DELETE FROM projects WHERE id = %s", (tenant.project_id,))
        rss = {name: vm_hwm_mib(service) for name, service in services.items()}
    finally:
        for service in services.values():
            service.stop()
    cpu = meter.per_item_ms(int(stored))
    return {
        "endpoint": path,
        "traces_per_request": per_request,
        "connections": args.connections,
        "workers": args.workers,
        "offered_rate": args.rate or None,
        "load_seconds": load_seconds,
        "requests": result.requests,
        "non2xx": result.non2xx,
        "socket_errors": result.socket_errors,
        "request_p50_ms": result.p50_ms,
        "request_p99_ms": result.p99_ms,
        "accepted": accepted,
        "accepted_rate": accepted / load_seconds,
        "stored": stored,
        "stored_during_load": stored_at_end,
        "stored_rate": stored / total_seconds,
        "drain_seconds": total_seconds - load_seconds,
        "lag_samples": lag,
        "max_lag": max((v for _, v in lag), default=0.0),
        "freshness_samples": len(fresh),
        "freshness_failures": failures[:10],
        "freshness_p50_s": statistics.median(fresh) if fresh else float("nan"),
        "freshness_p99_s": percentile(fresh, 0.99),
        "freshness_max_s": max(fresh, default=float("nan")),
        "cpu_ms_per_trace": cpu,
        "peak_rss_mib": rss,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the sustained load")
    parser.add_argument("--batch", type=int, default=100, help="traces a request (0: the single endpoint)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="INGEST_WORKERS")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered traces/s (each connection waits between requests; 0: as fast as it answers)",
    )
    parser.add_argument("--count", type=int, default=20_000, help="traces of the bare baseline (0: skip it)")
    args = parser.parse_args()
    load_env_file()
    settings = Settings.from_env()
    body = trace_body()
    logs = ROOT / ".devstack" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = await baseline(settings, body, args.count) if args.count else float("nan")
    run = await pipeline(settings, args, logs)
    cpu = run["cpu_ms_per_trace"]
    print(
        f"\nend to end, sustained: {run['load_seconds']:.0f} s of wrk on {run['endpoint']} "
        f"({run['traces_per_request']} a request, {args.connections} connections, {args.workers} ingest worker(s))\n"
    )
    print("| what | value |")
    print("|---|---|")
    print(f"| bare produce → consume → COPY (baseline) | {base:,.0f} traces/s |")
    print(f"| acknowledged (202/207) during the load | {run['accepted_rate']:,.0f} traces/s |")
    print(
        f"| stored, load start → last row (drain {run['drain_seconds']:.1f} s) | {run['stored_rate']:,.0f} traces/s |"
    )
    print(f"| lag (acknowledged - stored), max of 2 s samples | {run['max_lag']:,.0f} traces |")
    print(
        f"| freshness 202 → readable, p50 / p99 / max ({run['freshness_samples']} samples) | "
        f"{run['freshness_p50_s'] * 1000:.0f} / {run['freshness_p99_s'] * 1000:.0f} / {run['freshness_max_s'] * 1000:.0f} ms |"
    )
    print(f"| request p50 / p99 | {run['request_p50_ms']:.1f} / {run['request_p99_ms']:.1f} ms |")
    print("| CPU ms per stored trace | " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()) + " |")
    print("| peak RSS MiB | " + ", ".join(f"{k} {v:.0f}" for k, v in run["peak_rss_mib"].items()) + " |")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "e2e.json").write_text(json.dumps({"baseline_rate": base, "count": args.count, **run}, indent=2))
    if run["non2xx"] or run["freshness_failures"] or run["stored"] < run["accepted"]:
        raise SystemExit(
            f"non-2xx {run['non2xx']}, freshness failures {run['freshness_failures']}, "
            f"stored {run['stored']} of {run['accepted']} acknowledged"
        )


if __name__ == "__main__":
    asyncio.run(main())
