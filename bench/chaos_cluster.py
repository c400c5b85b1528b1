"""Fault scenarios on a three-broker cluster, several workers per stage (part of ``make chaos``).

Each scenario gets its own topic prefix (replication factor 3, ``min.insync.replicas=2``), tenant
and service processes, sends ``count`` traces at a steady ``rate`` (so the load lasts through the
fault), injects its fault, waits for the pipeline to settle and reconciles exactly
(shared.devstack.reconcile): accepted = stored + dead-lettered, 0 missing, 0 duplicates.

- ``leader``: kill -9 the broker leading most ``traces.raw`` partitions; restart it 10 s later.
  503s are allowed while leaders move; no 202 may be lost.
- ``min-isr``: kill -9 two of the three brokers: every partition drops below min ISR; ingest must
  answer 503, never 202, until they are restarted (15 s later).
- ``scale``: one router and one storage worker; add one of each mid-load, then kill -9 the first
  of each: two rebalances per group, nothing skipped, re-deliveries absorbed by idempotent storage.
- ``stall``: a long database outage — the ``traces`` table locked for 25 s — stalls both storage
  workers beyond their ``max.poll.interval`` (10 s here): they leave the group, finish the batch
  when the lock goes, fail its commit once (re-delivered, absorbed), rejoin and resume; the
  scenario counts their warnings to show there is no storm.

"time to recover": from the end of the fault (the kill for ``leader`` and ``scale``, the restart
for ``min-isr``, the lock's release for ``stall``) until the last answer that was not a 202, or
until the condition the scenario waits for (leaders moved, ISR complete, group re-formed), whichever
is later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from shared.contracts.topics import Topics
from shared.devstack import cluster, processes
from shared.devstack.pipeline import Service, TopicTap, make_tenant, start_ingest, start_worker
from shared.devstack.reconcile import Report, Sender, plan, reconcile, settle
from shared.devstack.stack import Stack
from shared.runtime.kafka import ensure_topics, min_insync_replicas
from shared.runtime.settings import Settings, libpq_url

PARTITIONS = 6
STALL_SECONDS = 25.0
MAX_POLL_SECONDS = 10.0


@dataclass
class Run:
    stack: Stack
    settings: Settings
    topics: Topics
    logs: Path
    sender: Sender
    ingest: list[Service]
    router: list[Service]
    storage: list[Service]
    notes: dict[str, Any] = field(default_factory=dict)

    def all(self) -> dict[str, list[Service]]:
        return {"ingest": self.ingest, "router": self.router, "storage": self.storage}

    def stop(self) -> None:
        for group in self.all().values():
            for service in group:
                if service.proc.poll() is None:
                    service.stop()

    def group(self, stage: str) -> str:
        return f"{self.settings.kafka_topic_prefix}{stage}_worker"


@dataclass
class Fault:
    what: str
    ended_at: float  # loop time the fault ended (recovery is measured from here)
    recovered_at: float  # loop time the scenario's own condition of recovery held


def now() -> float:
    return asyncio.get_running_loop().time()


def kill9(service: Service) -> None:
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait(10)


async def fault_leader(run: Run) -> Fault:
    bootstrap, raw = run.stack.bootstrap, run.topics.raw
    state = await cluster.partitions(bootstrap, raw)
    victim = cluster.busiest_leader(state)
    led = sorted(n for n, p in state.items() if p.leader == victim)
    broker = cluster.node(run.stack.nodes, victim)
    cluster.kill9(broker)
    killed = now()
    _, moved = await cluster.wait_until(
        bootstrap,
        raw,
        lambda s: all(p.leader not in (victim, -1) for p in s.values()),
        90,
        f"leaders of broker {victim}'s partitions moved",
    )
    await asyncio.sleep(max(0.0, 10 - (now() - killed)))
    await asyncio.to_thread(broker.start)
    _, insync = await cluster.wait_until(bootstrap, raw, cluster.fully_in_sync, 180, "every replica in sync")
    run.notes |= {
        "killed broker": f"{victim} (led partitions {led} of {len(state)})",
        "leaders moved after (s)": round(moved, 1),
        "ISR complete after restart (s)": round(insync, 1),
    }
    return Fault(
        f"kill -9 of broker {victim}, leader of {len(led)}/{len(state)} traces.raw partitions; restarted 10 s later",
        killed,
        killed + moved,
    )


async def fault_min_isr(run: Run) -> Fault:
    bootstrap, raw = run.stack.bootstrap, run.topics.raw
    min_isr = min_insync_replicas(run.settings.kafka_replication_factor)
    keep = run.stack.brokers[0].node_id
    victims = [b for b in run.stack.brokers if b.node_id != keep]
    for broker in victims:
        cluster.kill9(broker)
    _, shrank = await cluster.wait_until(
        bootstrap,
        raw,
        lambda s: len(cluster.below_min_isr(s, min_isr)) == len(s),
        60,
        "every partition below min ISR",
    )
    below_since = now()
    await asyncio.sleep(15)
    accepted_before = run.sender.count(202)
    window = [status for t, status in run.sender.answers if t >= below_since]
    for broker in victims:
        await asyncio.to_thread(broker.start)
    restarted = now()
    _, insync = await cluster.wait_until(bootstrap, raw, cluster.fully_in_sync, 180, "every replica in sync")
    run.notes |= {
        "killed brokers": [b.node_id for b in victims],
        "all partitions below min ISR after (s)": round(shrank, 1),
        "answers while below min ISR (15 s)": len(window),
        "503s while below min ISR": window.count(503),
        "202s while below min ISR (must be 0)": window.count(202),
        "ISR complete after restart (s)": round(insync, 1),
        "202s before the restart": accepted_before,
    }
    if window.count(202):
        run.notes["FAILED"] = "ingest answered 202 while every partition was below min ISR"
    return Fault(
        f"kill -9 of brokers {[b.node_id for b in victims]}: every partition below min ISR ({min_isr}) for 15 s; "
        "then restarted",
        restarted,
        restarted + insync,
    )


async def fault_scale(run: Run) -> Fault:
    bootstrap = run.stack.bootstrap
    run.router.append(await asyncio.to_thread(start_worker, "router_worker", run.settings, run.logs))
    run.storage.append(await asyncio.to_thread(start_worker, "storage_worker", run.settings, run.logs))
    added = now()
    _, router_in = await cluster.wait_for_group(bootstrap, run.group("router"), 2, PARTITIONS, 60)
    _, storage_in = await cluster.wait_for_group(bootstrap, run.group("storage"), 2, PARTITIONS, 60)
    await asyncio.sleep(max(0.0, 5 - (now() - added)))  # both share the load for a while
    kill9(run.router[0])
    kill9(run.storage[0])
    killed = now()
    _, router_out = await cluster.wait_for_group(bootstrap, run.group("router"), 1, PARTITIONS, 90)
    await cluster.wait_for_group(bootstrap, run.group("storage"), 1, PARTITIONS, 90)
    storage_out = now() - killed
    run.notes |= {
        "rebalance after adding (s): router, storage": [round(router_in, 1), round(storage_in, 1)],
        "rebalance after kill -9 (s): router, storage": [round(router_out, 1), round(storage_out, 1)],
    }
    return Fault(
        "added a router and a storage worker mid-load (2 per group), then kill -9 of the first of each",
        killed,
        killed + max(router_out, storage_out),
    )


async def fault_stall(run: Run) -> Fault:
    offsets = {s.log: s.log.stat().st_size for s in run.storage}
    async with await psycopg.AsyncConnection.connect(libpq_url(run.settings.database_url)) as conn:
        async with conn.transaction():
            await conn.execute("LOCK TABLE traces IN ACCESS EXCLUSIVE MODE")
            locked = now()
            await asyncio.sleep(STALL_SECONDS)
    released = now()
    _, rejoined = await cluster.wait_for_group(
        run.stack.bootstrap, run.group("storage"), len(run.storage), PARTITIONS, 120
    )
    await asyncio.sleep(5)  # the batch in hand when the lock went, its failed commit, the rejoin
    levels: dict[str, int] = {}
    events: dict[str, int] = {}
    for log, offset in offsets.items():
        for line in processes.log_since(log, offset).splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                level = str(entry.get("level", "?"))
                levels[level] = levels.get(level, 0) + 1
                if level in ("warning", "error", "critical"):
                    event = str(entry.get("event", "?"))[:70]
                    events[event] = events.get(event, 0) + 1
    run.notes |= {
        "traces locked (s)": round(released - locked, 1),
        "storage max.poll.interval (s)": MAX_POLL_SECONDS,
        "group re-formed after release (s)": round(rejoined, 1),
        "storage log lines by level during the stall": levels,
        "storage warnings/errors": events,
    }
    return Fault(
        f"the traces table locked for {STALL_SECONDS:.0f} s (a database outage) with storage "
        f"max.poll.interval at {MAX_POLL_SECONDS:.0f} s",
        released,
        released + rejoined,
    )


SCENARIOS: dict[str, Callable[[Run], Awaitable[Fault]]] = {
    "leader": fault_leader,
    "min-isr": fault_min_isr,
    "scale": fault_scale,
    "stall": fault_stall,
}


async def scenario(name: str, stack: Stack, count: int, rate: float, logs: Path) -> dict[str, Any]:
    base = Settings.from_env(os.environ | stack.service_env())
    settings = msgspec.structs.replace(
        base,
        kafka_topic_prefix=f"chaos-{name}-{uuid.uuid4().hex[:6]}.",
        kafka_topic_partitions=PARTITIONS,
    )
    topics = await ensure_topics(settings)
    tenant = await make_tenant(settings)
    per_stage = 1 if name == "scale" else 2
    storage_extra = {"KAFKA_MAX_POLL_INTERVAL_SECONDS": f"{MAX_POLL_SECONDS:g}"} if name == "stall" else {}
    sender = Sender([], tenant, rate=rate)
    run = Run(stack, settings, topics, logs, sender, [], [], [])
    dlq_tap = TopicTap(settings, topics.dlq)
    started = time.monotonic()
    try:
        run.ingest.append(await asyncio.to_thread(start_ingest, settings, logs))
        for _ in range(per_stage):
            run.router.append(await asyncio.to_thread(start_worker, "router_worker", settings, logs))
            run.storage.append(
                await asyncio.to_thread(start_worker, "storage_worker", settings, logs, **storage_extra)
            )
        await dlq_tap.start()
        sender.urls = [s.url for s in run.ingest]
        sends = plan(tenant, count, seed=sum(map(ord, name)), all_external_ids=True)
        sending = asyncio.create_task(sender.run(sends))
        while sum(1 for s in sends if s.trace_id) < count // 4 and not sending.done():
            await asyncio.sleep(0.05)
        fault = await SCENARIOS[name](run)
        await asyncio.wait_for(sending, timeout=600)
        await settle(settings, tenant.project_id, sends, dlq_tap, timeout=240)
        report = await reconcile(settings, tenant, sends, dlq_tap, run.all())
        report.wrong.extend(sender.refused)
        if "FAILED" in run.notes:
            report.wrong.append(str(run.notes["FAILED"]))
    finally:
        await dlq_tap.stop()
        run.stop()
    c = report.counters
    routed = c.get("router routed", 0) + c.get("router dead-lettered", 0)
    outcomes = sum(v for k, v in c.items() if k.startswith("storage ")) - c.get("storage dead-lettered", 0)
    run.notes["counters: ingest accepted, router routed+dead-lettered, storage outcomes"] = [
        int(c.get("ingest accepted", 0)),
        int(routed),
        int(outcomes + c.get("storage dead-lettered", 0)),
    ]
    run.notes["re-deliveries absorbed by storage (outcomes - routed)"] = int(
        outcomes + c.get("storage dead-lettered", 0) - c.get("router routed", 0)
    )
    failures = sender.failures_since(fault.ended_at)
    recovered = max([fault.recovered_at, *failures]) - fault.ended_at
    return {
        "fault": fault.what,
        "exact": report.exact,
        "row": {
            "traces sent": count,
            "requests": sender.sent(),
            "202s": sender.count(202),
            "503s": sender.count(503),
            "lost connections": sender.count(0),
            "stored": report.stored_versions,
            "dead-lettered": sum(report.dead_lettered.values()),
            "missing": len(report.missing),
            "duplicates": len(report.duplicates),
            "time to recover (s)": round(recovered, 1),
        },
        "notes": run.notes,
        "report": report,
        "seconds": time.monotonic() - started,
    }


def table(row: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| " + " | ".join(row) + " |",
            "|" + "---|" * len(row),
            "| " + " | ".join(map(str, row.values())) + " |",
        ]
    )


async def run_all(
    names: list[str], root: Path, count: int, rate: float, logs: Path, *, keep: bool = False
) -> dict[str, dict[str, Any]]:
    """Bring up the cluster stack in ``root``, run ``names``, print a table per scenario."""
    stack = Stack(root, random_ports=True)
    # The single-broker scenarios loaded .devstack/env: its endpoints are not this cluster's.
    saved = {k: os.environ.pop(k) for k in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") if k in os.environ}
    try:
        await asyncio.to_thread(stack.up, services=False, brokers=3)
    finally:
        os.environ.update(saved)
    if stack.state.external_kafka or stack.state.external_database_url:
        raise SystemExit(
            f"{root} uses an external Kafka or PostgreSQL; `dev --dir {root} down`, remove it, retry"
        )
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            result = await scenario(name, stack, count, rate, logs)
            report: Report = result.pop("report")
            print(f"\n### cluster {name}: {result['fault']} ({result['seconds']:.0f} s)\n")
            print(table(result["row"]))
            print()
            for key, value in result["notes"].items():
                print(f"- {key}: {value}")
            print()
            print(report.table())
            results[name] = result | {
                "wrong": report.wrong[:20],
                "missing_examples": report.missing[:10],
                "counters": report.counters,
            }
    finally:
        if not keep:
            await asyncio.to_thread(stack.down)
    return results
