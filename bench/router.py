"""Router benchmark: CPU per trace of ``python -m router_worker`` beside a bare aiokafka loop.

    .venv/bin/python -m bench.router [--count 50000] [--rate 0] [--profile]

Uses the stack of ``.devstack/env``. In one run, each on a topic prefix of its own, the same
``--count`` raw envelopes (~1 KB bodies, a key restricted to one n8n platform) are produced while
the process consumes them (bench/worker_cpu.py):

1. baselines: ``python -m bench.bare_loops relay`` — consume → produce every record → gather the
   acks → commit, with the workers' Kafka settings and loop, nothing else; once with aiokafka's
   fetch defaults, once with the workers' fetch tuning (``shared.runtime.kafka.WORKER_FETCH``:
   the baseline the ratio is taken against);
2. ``python -m router_worker`` as the pipeline runs it (decode → resolve → produce → commit).

CPU of each process is read from ``/proc`` (bench/procstat.py) from the first record produced to
the last one committed: CPU ms per trace is the figure that holds on a shared machine; rates are
printed beside it. ``--rate`` paces the producer (records/s; 0: as fast as it goes).
``--profile`` adds a third run of the router under py-spy, saved as
``bench/results/router-worker.folded`` (``-f raw``, 200 Hz; its CPU figures are not used).
Writes ``bench/results/router.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import msgspec
import psycopg

from bench.ingest import load_env_file, trace_body
from bench.worker_cpu import ConsumerRun, Values, run_consumer, start_bare, stop
from shared import registry
from shared.contracts.envelope import encode, message_key
from shared.devstack.pipeline import Tenant, start_worker
from shared.runtime.kafka import ensure_topics
from shared.runtime.settings import Settings, libpq_url
from tests.router_helpers import raw_envelopes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


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


def raw_values(tenant: Tenant, count: int, body: bytes) -> Values:
    return [
        (message_key(e.project_id, e.external_id, e.trace_id), encode(e))
        for e in raw_envelopes(tenant, count, body=body)
    ]


def prefixed(settings: Settings, what: str) -> Settings:
    return msgspec.structs.replace(settings, kafka_topic_prefix=f"bench{time.time_ns()}-{what}.")


async def bare(
    settings: Settings, warmup: Values, values: Values, rate: float, *, worker_fetch: bool
) -> ConsumerRun:
    own = prefixed(settings, "bare")
    topics = await ensure_topics(own)
    group = f"{own.kafka_topic_prefix}bare"
    proc = start_bare(own, "relay", topics.raw, topics.routed, group, worker_fetch=worker_fetch)
    try:
        return await run_consumer(own, "bare", proc, group, topics.raw, warmup, values, rate=rate)
    finally:
        stop(proc)


async def router(
    settings: Settings, warmup: Values, values: Values, rate: float, profile: Path | None = None
) -> ConsumerRun:
    own = prefixed(settings, "router")
    topics = await ensure_topics(own)
    logs = ROOT / ".devstack" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    service = start_worker("router_worker", own, logs, LOG_LEVEL="warning")
    try:
        return await run_consumer(
            own, "router", service.proc, f"{own.kafka_topic_prefix}router_worker", topics.raw, warmup,
            values, rate=rate, profile=profile,
        )  # fmt: skip
    finally:
        service.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=0, help="records/s produced (0: unpaced)")
    parser.add_argument("--profile", action="store_true", help="a py-spy profile of the router")
    args = parser.parse_args()
    load_env_file()
    settings = Settings.from_env()
    tenant = await bench_tenant(settings)
    body = trace_body()
    warmup, values = raw_values(tenant, 500, body), raw_values(tenant, args.count, body)

    plain = await bare(settings, warmup, values, args.rate, worker_fetch=False)
    base = await bare(settings, warmup, values, args.rate, worker_fetch=True)
    real = await router(settings, warmup, values, args.rate)
    if args.profile:
        await router(settings, warmup, values, args.rate, RESULTS / "router-worker.folded")
    p, b, r = plain.cpu_ms["bare"], base.cpu_ms["bare"], real.cpu_ms["router"]
    paced = f"{args.rate:,.0f}/s" if args.rate else "unpaced"
    print(f"\nrouter benchmark: {args.count} envelopes with ~1 KB bodies, produced {paced}\n")
    print("| process | CPU ms per trace | traces/s |")
    print("|---|---|---|")
    print(
        f"| bare consume → produce → commit, aiokafka's fetch defaults | {p:.4f} | {plain.records / plain.seconds:,.0f} |"
    )
    print(
        f"| bare consume → produce → commit, the workers' fetch (baseline) | {b:.4f} | {base.records / base.seconds:,.0f} |"
    )
    print(f"| python -m router_worker | {r:.4f} | {real.records / real.seconds:,.0f} |")
    print(f"\nCPU ratio router/bare: {r / b:.2f} (router/bare with aiokafka's fetch defaults: {r / p:.2f})")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router.json").write_text(
        json.dumps(
            {
                "count": args.count,
                "rate_produced": args.rate,
                "baseline_library_fetch": plain.row(),
                "baseline": base.row(),
                "router": real.row(),
                "baseline_library_fetch_cpu_ms": p,
                "baseline_cpu_ms": b,
                "router_cpu_ms": r,
                "cpu_ratio": r / b,
                # throughput figures, as bench/report.py reads them
                "baseline_rate": base.records / base.seconds,
                "router_rate": real.records / real.seconds,
                "ratio": (real.records / real.seconds) / (base.records / base.seconds),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
