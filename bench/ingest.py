"""Ingest benchmark: the real endpoint against a bare aiohttp handler, in the same run.

    .venv/bin/python -m bench.ingest [--seconds 10] [--connections 64] [--workers 1]

Uses the stack of ``.devstack/env`` (``make bench`` brings it up first). Starts its own
``python -m ingest_api`` on a free port with a fresh bench project and key, and the bare handler
(``bench/bare_server.py``: read the body, answer 202). Both are driven by the same keep-alive load
generator with 1 KB canonical traces; prints rates, the ratio, p50/p99 latency and the ingest
process's peak RSS, and writes ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import msgspec
import psycopg

from bench.load import Result, drive
from shared import registry
from shared.devstack.pipeline import free_port
from shared.runtime.settings import Settings, libpq_url

ROOT = Path(__file__).resolve().parent.parent


def load_env_file() -> None:
    env_file = ROOT / ".devstack" / "env"
    if not env_file.exists():
        raise SystemExit("no .devstack/env: run `make run` (or `mibo-ingest dev up --no-services`) first")
    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            os.environ.setdefault(name, value.strip("'"))


def trace_body(size: int = 1024) -> bytes:
    attributes = {"model": "gpt-x", "prompt": ""}
    span = {
        "span_id": "0000000000000001",
        "name": "llm.call",
        "start_time_unix_nano": "1700000000000000000",
        "end_time_unix_nano": "1700000000500000000",
        "status": {"code": 1},
        "attributes": attributes,
    }
    body = {"spans": [span], "metadata": {"workflowId": "bench"}}
    pad = size - len(msgspec.json.encode(body))
    attributes["prompt"] = "x" * max(pad, 0)
    return msgspec.json.encode(body)


async def bench_key(settings: Settings) -> str:
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"bench-{time.time_ns()}")
        return (await registry.create_key(conn, settings.key_pepper, project.id, "bench")).key


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def peak_rss_mib(pid: int) -> float:
    total = 0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def row(name: str, result: Result) -> str:
    return (
        f"| {name} | {result.rate:,.0f} | {result.p50:.1f} | {result.pct(0.99):.1f} | "
        f"{result.requests} | {dict(sorted(result.statuses.items()))} |"
    )


def batch_body(body: bytes, count: int) -> bytes:
    return b'{"traces": [' + b",".join([body] * count) + b"]}"


async def measure(
    bare_port: int, ingest_port: int, body: bytes, headers: dict[str, str], args: argparse.Namespace
) -> tuple[Result, Result, Result]:
    warm = min(2.0, args.seconds / 5)
    for port in (bare_port, ingest_port):  # warm-up: connections, producer metadata, caches
        await drive(f"http://127.0.0.1:{port}/public/traces", body, headers, connections=8, seconds=warm)
    base = await drive(
        f"http://127.0.0.1:{bare_port}/public/traces",
        body,
        headers,
        connections=args.connections,
        seconds=args.seconds,
    )
    real = await drive(
        f"http://127.0.0.1:{ingest_port}/public/traces",
        body,
        headers,
        connections=args.connections,
        seconds=args.seconds,
    )
    batch = await drive(
        f"http://127.0.0.1:{ingest_port}/public/traces/batch",
        batch_body(body, args.batch),
        headers,
        connections=max(1, args.connections // 8),
        seconds=args.seconds,
    )
    return base, real, batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="INGEST_WORKERS for the ingest process")
    parser.add_argument("--batch", type=int, default=100, help="traces per batch request")
    args = parser.parse_args()
    load_env_file()
    settings = Settings.from_env()
    key = asyncio.run(bench_key(settings))
    body = trace_body()
    headers = {"Content-Type": "application/json", "x-api-key": key}

    bare_port, ingest_port = free_port(), free_port()
    env = os.environ | {
        "INGEST_HOST": "127.0.0.1",
        "INGEST_PORT": str(ingest_port),
        "INGEST_WORKERS": str(args.workers),
        "LOG_LEVEL": "warning",
    }
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_server", str(bare_port)])
    ingest = subprocess.Popen([sys.executable, "-m", "ingest_api"], env=env, cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{bare_port}/healthz")
        wait_http(f"http://127.0.0.1:{ingest_port}/readyz")
        base, real, batch = asyncio.run(measure(bare_port, ingest_port, body, headers, args))
        rss = peak_rss_mib(ingest.pid)
    finally:
        for proc in (bare, ingest):
            proc.terminate()
            proc.wait(30)

    ratio = real.rate / base.rate
    print(f"\ningest benchmark: {len(body)} B canonical traces, {args.connections} keep-alive connections, "
          f"{args.seconds:g} s each, {args.workers} ingest worker(s), {os.cpu_count()} cores\n")  # fmt: skip
    print("| target | req/s | p50 ms | p99 ms | requests | statuses |")
    print("|---|---|---|---|---|---|")
    print(row("bare aiohttp handler (baseline)", base))
    print(row("ingest_api → Kafka ack (acks=all)", real))
    print(f"\nratio ingest/bare: {ratio:.2f}   ingest peak RSS: {rss:.0f} MiB")
    batch_traces = batch.rate * args.batch
    print(f"\nbatch endpoint ({args.batch} traces a request, {max(1, args.connections // 8)} connections):")
    print("| endpoint | traces/s | p50 ms | p99 ms | statuses |")
    print("|---|---|---|---|---|")
    print(
        f"| POST /public/traces | {real.rate:,.0f} | {real.p50:.1f} | {real.pct(0.99):.1f} | {dict(real.statuses)} |"
    )
    print(
        f"| POST /public/traces/batch | {batch_traces:,.0f} | {batch.p50:.1f} | {batch.pct(0.99):.1f} | "
        f"{dict(batch.statuses)} |"
    )
    print(f"\nratio batch/single (traces/s): {batch_traces / real.rate:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest.json").write_text(
        json.dumps(
            {
                "body_bytes": len(body),
                "connections": args.connections,
                "seconds": args.seconds,
                "workers": args.workers,
                "baseline": {"rate": base.rate, "p50_ms": base.p50, "p99_ms": base.pct(0.99)},
                "ingest": {
                    "rate": real.rate,
                    "p50_ms": real.p50,
                    "p99_ms": real.pct(0.99),
                    "peak_rss_mib": rss,
                },
                "ratio": ratio,
                "batch": {
                    "traces_per_request": args.batch,
                    "traces_per_second": batch_traces,
                    "p99_ms": batch.pct(0.99),
                },
            },
            indent=2,
        )
    )
    if set(batch.statuses) != {207}:
        raise SystemExit(f"the batch endpoint answered something other than 207: {batch.statuses}")
    if set(real.statuses) != {202}:
        raise SystemExit(f"ingest answered something other than 202: {real.statuses}")


if __name__ == "__main__":
    main()
