"""Fault scenarios, each reconciled exactly (``make chaos``).

    .venv/bin/python -m bench.chaos [--count 3000] [--only router,storage,ingest,postgres,kafka,
                                                          leader,min-isr,scale,stall]

The first five run against the local stack of ``.devstack/`` (``make chaos`` brings it up without
services); the last four (see ``bench/chaos_cluster.py``) against a three-broker cluster of their
own in ``.devstack-cluster/``, brought up here and stopped at the end (``--keep-cluster`` keeps it).
Every scenario gets its own topic prefix, tenant and service processes, sends ``--count`` traces
(all with external ids, so a retried request is idempotent), injects its fault while traffic
flows, waits for the pipeline to settle and reconciles: accepted = stored + dead-lettered, zero
missing, zero duplicates. Only loopback; every wait is bounded. Prints a Markdown table per
scenario and writes ``bench/results/chaos.json``; exits 1 if any scenario is not exact.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bench import chaos_cluster
from bench.ingest import load_env_file
from shared.devstack import processes
from shared.devstack.pipeline import Service, TopicTap, make_tenant, start_ingest, start_worker
from shared.devstack.reconcile import Report, Send, Sender, plan, reconcile, settle
from shared.devstack.stack import Stack
from shared.runtime.kafka import ensure_topics
from shared.runtime.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Pipeline:
    settings: Settings
    logs: Path
    ingest: list[Service]
    router: list[Service]
    storage: list[Service]

    def all(self) -> dict[str, list[Service]]:
        return {"ingest": self.ingest, "router": self.router, "storage": self.storage}

    def stop(self) -> None:
        for group in self.all().values():
            for service in group:
                if service.proc.poll() is None:
                    service.stop()


def kill9(service: Service) -> None:
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait(10)


async def fault_router(p: Pipeline, stack: Stack) -> str:
    kill9(p.router[0])
    await asyncio.sleep(1)
    p.router.append(await asyncio.to_thread(start_worker, "router_worker", p.settings, p.logs))
    return "router killed -9, restarted 1 s later"


async def fault_storage(p: Pipeline, stack: Stack) -> str:
    kill9(p.storage[0])
    await asyncio.sleep(1)
    p.storage.append(await asyncio.to_thread(start_worker, "storage_worker", p.settings, p.logs))
    return "storage worker killed -9 mid-batch, restarted 1 s later"


async def fault_ingest(p: Pipeline, stack: Stack) -> str:
    kill9(p.ingest[0])
    return "one of two ingest processes killed -9; the sender fails over to the other"


async def fault_postgres(p: Pipeline, stack: Stack) -> str:
    if stack.state.external_database_url:
        raise SystemExit("the postgres scenario needs the local stack's own PostgreSQL")
    await asyncio.to_thread(stack.postgres.stop)
    await asyncio.sleep(2)
    await asyncio.to_thread(stack.postgres.start)
    return "PostgreSQL stopped for 2 s, then started again"


async def fault_kafka(p: Pipeline, stack: Stack) -> str:
    if stack.state.external_kafka:
        raise SystemExit("the kafka scenario needs the local stack's own broker")
    pid = processes.running(stack.broker.pidfile)
    assert pid, "the broker runs"
    await asyncio.to_thread(processes.stop, pid, timeout=30)
    await asyncio.sleep(2)
    await asyncio.to_thread(stack.broker.start)
    return "Kafka broker stopped (SIGTERM) for 2 s, then started again; the API answered 503 meanwhile"


SCENARIOS: dict[str, Callable[[Pipeline, Stack], Awaitable[str]]] = {
    "router": fault_router,
    "storage": fault_storage,
    "ingest": fault_ingest,
    "postgres": fault_postgres,
    "kafka": fault_kafka,
}


async def scenario(
    name: str, base: Settings, stack: Stack, count: int, logs: Path
) -> tuple[str, Report, float]:
    settings = msgspec.structs.replace(base, kafka_topic_prefix=f"chaos-{name}-{uuid.uuid4().hex[:6]}.")
    topics = await ensure_topics(settings)
    tenant = await make_tenant(settings)
    ingest_count = 2 if name == "ingest" else 1
    p = Pipeline(
        settings,
        logs,
        [start_ingest(settings, logs) for _ in range(ingest_count)],
        [start_worker("router_worker", settings, logs)],
        [start_worker("storage_worker", settings, logs)],
    )
    dlq_tap = TopicTap(settings, topics.dlq)
    await dlq_tap.start()
    started = time.monotonic()
    try:
        sends: list[Send] = plan(tenant, count, seed=hash(name) % 1000, all_external_ids=True)
        sender = Sender([s.url for s in p.ingest], tenant)
        sending = asyncio.create_task(sender.run(sends))
        while sum(1 for s in sends if s.trace_id) < count // 3 and not sending.done():
            await asyncio.sleep(0.05)
        what = await SCENARIOS[name](p, stack)
        await asyncio.wait_for(sending, timeout=300)
        await settle(settings, tenant.project_id, sends, dlq_tap, timeout=180)
        report = await reconcile(settings, tenant, sends, dlq_tap, p.all())
        if sender.refused:
            report.wrong.extend(sender.refused)
        report.counters["sender retries after 503"] = sender.retries_503
        report.counters["sender retries after a lost connection"] = sender.retries_lost
    finally:
        await dlq_tap.stop()
        p.stop()
    return what, report, time.monotonic() - started


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=3000)
    every = [*SCENARIOS, *chaos_cluster.SCENARIOS]
    parser.add_argument("--only", default=",".join(every), help="comma-separated scenario names")
    parser.add_argument("--keep-cluster", action="store_true", help="leave .devstack-cluster running")
    parser.add_argument("--rate", type=float, default=150.0, help="requests/s of the cluster scenarios")
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(every)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(every)}")
    names = args.only.split(",")
    if any(n in SCENARIOS for n in names):
        load_env_file()
    settings = Settings.from_env()
    stack = Stack(ROOT / ".devstack")
    logs = ROOT / ".devstack" / "chaos-logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = {}
    failed = False
    for name in [n for n in names if n in SCENARIOS]:
        what, report, seconds = await scenario(name, settings, stack, args.count, logs)
        print(f"\n### {name}: {what} ({args.count} traces, {seconds:.0f} s)\n")
        print(report.table())
        print(
            "\n(counter checks are informative in fault scenarios: a killed process's counters die with"
            " it, and re-delivered records are counted twice; the reconciliation above is what must hold)"
        )
        failed |= not report.exact
        results[name] = {
            "fault": what,
            "exact": report.exact,
            "accepted": report.accepted,
            "stored_rows": report.stored_rows,
            "dead_lettered": dict(report.dead_lettered),
            "missing": len(report.missing),
            "duplicates": len(report.duplicates),
            "wrong": report.wrong[:20],
            "counters": report.counters,
            "seconds": seconds,
        }
    cluster_names = [n for n in names if n in chaos_cluster.SCENARIOS]
    if cluster_names:
        cluster_results = await chaos_cluster.run_all(
            cluster_names, ROOT / ".devstack-cluster", args.count, args.rate, logs, keep=args.keep_cluster
        )
        for name, result in cluster_results.items():
            failed |= not result["exact"]
            results[name] = result
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(results, indent=2))
    print("\nall scenarios exact" if not failed else "\nSOME SCENARIO IS NOT EXACT")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
