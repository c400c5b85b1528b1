"""Ingest benchmark: the real endpoints beside a bare aiohttp handler, in the same run, as CPU
milliseconds per request (the figure that holds on a shared machine) next to rates and p50/p99.

    .venv/bin/python -m bench.ingest [--seconds 10] [--connections 64] [--workers 1] [--profile]

Uses the stack of ``.devstack/env`` (``make bench`` brings it up first). Starts its own
``python -m ingest_api`` on a free port with a fresh bench project and key, and the bare handler
(``bench/bare_server.py``: read the body, answer 202). wrk (``bench/wrk.py``) drives each case
over keep-alive connections; CPU per request is utime+stime of the server's processes
(``bench/procstat.py``) over the run divided by its 2xx answers. Cases:

- bare aiohttp handler, 1 KB (the baseline);
- ``POST /public/traces``, 1 KB canonical JSON;
- ``POST /v1/traces``, 1 KB and 16 KB OTLP protobuf (one trace an export);
- ``POST /public/traces/batch``, 100 x 1 KB a request (``connections / 8`` connections).

``--profile``: afterwards, a py-spy profile of the ingest process under the JSON load
(``bench/results/ingest-json.folded``, collapsed stacks) and the functions on top.
Prints a Markdown table and writes ``bench/results/ingest.json``.
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
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import psycopg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from bench.procstat import CpuMeter, children
from bench.wrk import WrkResult, run_wrk
from shared import registry
from shared.devstack.pipeline import free_port
from shared.runtime.settings import Settings, libpq_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
JSON, PROTOBUF = "application/json", "application/x-protobuf"


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


def otlp_body(size: int = 1024, span_bytes: int = 1024) -> bytes:
    """An ``ExportTraceServiceRequest`` of about ``size`` bytes: one resource, one trace, spans of
    about ``span_bytes`` each (a prompt attribute pads them)."""

    def attribute(key: str, value: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=value))

    def request(spans: int, pad: int) -> ExportTraceServiceRequest:
        made = [
            Span(
                trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"),
                span_id=(i + 1).to_bytes(8, "big"),
                parent_span_id=b"" if i == 0 else (1).to_bytes(8, "big"),
                name=f"llm.call.{i}",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=1_700_000_000_000_000_000 + i,
                end_time_unix_nano=1_700_000_000_500_000_000 + i,
                attributes=[attribute("model", "gpt-x"), attribute("prompt", "x" * pad)],
            )
            for i in range(spans)
        ]
        resource = ResourceSpans(scope_spans=[ScopeSpans(spans=made)])
        resource.resource.attributes.append(attribute("service.name", "bench"))
        return ExportTraceServiceRequest(resource_spans=[resource])

    spans = max(1, round(size / span_bytes))
    bare = len(request(spans, 0).SerializeToString())
    pad = max(0, (size - bare) // spans - 3)
    return request(spans, pad).SerializeToString()


def batch_body(body: bytes, count: int) -> bytes:
    return b'{"traces": [' + b",".join([body] * count) + b"]}"


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


def process_group(pid: int) -> list[int]:
    """``pid`` and its children (the workers of an ``INGEST_WORKERS > 1`` parent)."""
    return [pid, *children(pid)]


def peak_rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


@dataclass(frozen=True)
class Case:
    name: str
    rate: float  # requests per second
    traces_per_request: int
    p50_ms: float
    p99_ms: float
    requests: int
    non2xx: int
    socket_errors: int
    cpu_ms_per_request: float

    @property
    def cpu_ms_per_trace(self) -> float:
        return self.cpu_ms_per_request / self.traces_per_request


def measure(
    name: str, url: str, body: bytes, pids: list[int], *, content_type: str, api_key: str,
    connections: int, seconds: float, traces_per_request: int = 1,
) -> Case:  # fmt: skip
    run_wrk(url, body, content_type=content_type, api_key=api_key, connections=8, seconds=2)  # warm-up
    meter = CpuMeter({"server": pids}).start()
    result: WrkResult = run_wrk(
        url, body, content_type=content_type, api_key=api_key, connections=connections, seconds=seconds
    )
    used = meter.stop().used["server"]
    case = Case(
        name,
        result.rate,
        traces_per_request,
        result.p50_ms,
        result.p99_ms,
        result.requests,
        result.non2xx,
        result.socket_errors,
        used * 1000 / max(1, result.ok),
    )
    print(f"  {name}: {result.rate:,.0f} req/s, {case.cpu_ms_per_request:.3f} ms CPU/req, "
          f"p50 {result.p50_ms:.1f} p99 {result.p99_ms:.1f} ms, non-2xx {result.non2xx}", flush=True)  # fmt: skip
    return case


def profile(pid: int, url: str, body: bytes, api_key: str, out: Path, seconds: int = 15) -> list[str]:
    """py-spy's collapsed stacks of ``pid`` while wrk loads it; the top functions by own samples."""
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", str(seconds),
         "-r", "200", "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    run_wrk(url, body, content_type=JSON, api_key=api_key, connections=64, seconds=seconds)
    spy.wait(seconds + 30)
    return top_of(out)


def top_of(folded: Path, count: int = 15) -> list[str]:
    """Functions by samples where they are on top of the stack ("self"), and by inclusive share."""
    own: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        samples = int(n)
        total += samples
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0) + samples
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:count]
    return [f"{100 * n / max(1, total):5.1f} %  {frame}" for frame, n in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="INGEST_WORKERS for the ingest process")
    parser.add_argument("--batch", type=int, default=100, help="traces per batch request")
    parser.add_argument("--profile", action="store_true", help="save a py-spy profile of the JSON route")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measure each case this many times; the median run is kept"
    )
    parser.add_argument("--only", default="", help="comma-separated case names to run (default: all)")
    parser.add_argument(
        "--before",
        default="",
        help="a source tree of an earlier version (git archive of a commit): its ingest_api runs too, "
        "each case measured on it right before this tree's (cases named before:...)",
    )
    args = parser.parse_args()
    load_env_file()
    settings = Settings.from_env()
    key = asyncio.run(bench_key(settings))
    body, otlp_1k, otlp_16k = trace_body(), otlp_body(1024), otlp_body(16 * 1024)

    bare_port, ingest_port = free_port(), free_port()
    env = os.environ | {
        "INGEST_HOST": "127.0.0.1",
        "INGEST_PORT": str(ingest_port),
        "INGEST_WORKERS": str(args.workers),
        "LOG_LEVEL": "warning",
    }
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_server", str(bare_port)], cwd=ROOT)
    ingest = subprocess.Popen([sys.executable, "-m", "ingest_api"], env=env, cwd=ROOT)
    servers = [bare, ingest]
    before_port = free_port()
    if args.before:
        before_env = env | {"INGEST_PORT": str(before_port), "PYTHONPATH": args.before}
        servers.append(
            subprocess.Popen([sys.executable, "-m", "ingest_api"], env=before_env, cwd=args.before)
        )
    cases: list[Case] = []
    top: list[str] = []
    only = set(filter(None, args.only.split(",")))
    try:
        wait_http(f"http://127.0.0.1:{bare_port}/healthz")
        wait_http(f"http://127.0.0.1:{ingest_port}/readyz")
        ingest_pids = process_group(ingest.pid)
        api = f"http://127.0.0.1:{ingest_port}"
        if args.before:
            wait_http(f"http://127.0.0.1:{before_port}/readyz")
        plan = [
            ("bare", f"http://127.0.0.1:{bare_port}/public/traces", body, JSON, [bare.pid], 1, args.connections),
            ("json_1k", f"{api}/public/traces", body, JSON, ingest_pids, 1, args.connections),
            ("otlp_1k", f"{api}/v1/traces", otlp_1k, PROTOBUF, ingest_pids, 1, args.connections),
            ("otlp_16k", f"{api}/v1/traces", otlp_16k, PROTOBUF, ingest_pids, 1, args.connections),
            ("batch_100x1k", f"{api}/public/traces/batch", batch_body(body, args.batch), JSON, ingest_pids,
             args.batch, max(1, args.connections // 8)),
        ]  # fmt: skip
        print(
            f"ingest benchmark: {args.seconds:g} s a case, {args.workers} ingest worker(s), {os.cpu_count()} cores"
        )
        for name, url, data, kind, pids, per_request, connections in [
            entry for entry in plan for _ in range(args.repeat)
        ]:
            if only and name not in only:
                continue
            if args.before and name != "bare":
                old = url.replace(f":{ingest_port}/", f":{before_port}/")
                cases.append(
                    measure(f"before:{name}", old, data, process_group(servers[2].pid), content_type=kind,
                            api_key=key, connections=connections, seconds=args.seconds,
                            traces_per_request=per_request)
                )  # fmt: skip
            cases.append(
                measure(name, url, data, pids, content_type=kind, api_key=key, connections=connections,
                        seconds=args.seconds, traces_per_request=per_request)
            )  # fmt: skip
        rss = peak_rss_mib(ingest_pids)
        if args.profile:
            RESULTS.mkdir(exist_ok=True)
            target = ingest_pids[-1]  # the (first) worker when there are several
            top = profile(target, f"{api}/public/traces", body, key, RESULTS / "ingest-json.folded")
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(30)

    runs: dict[str, list[Case]] = {}
    for c in cases:
        runs.setdefault(c.name, []).append(c)
    cases = [sorted(group, key=lambda c: c.cpu_ms_per_request)[len(group) // 2] for group in runs.values()]
    by_name = {c.name: c for c in cases}
    base = by_name.get("bare")
    print(f"\n{len(body)} B canonical JSON, {len(otlp_1k)} B / {len(otlp_16k)} B OTLP protobuf, "
          f"{args.connections} connections, {args.workers} worker(s); ingest peak RSS {rss:.0f} MiB\n")  # fmt: skip
    print("| case | req/s | traces/s | p50 / p99 ms | CPU ms/request | CPU ms/trace | x bare | non-2xx |")
    print("|---|---|---|---|---|---|---|---|")
    for c in cases:
        ratio = f"{c.cpu_ms_per_request / base.cpu_ms_per_request:.2f}" if base else "-"
        print(f"| {c.name} | {c.rate:,.0f} | {c.rate * c.traces_per_request:,.0f} | {c.p50_ms:.1f} / {c.p99_ms:.1f} | "
              f"{c.cpu_ms_per_request:.3f} | {c.cpu_ms_per_trace:.4f} | {ratio} | {c.non2xx} |")  # fmt: skip
    if top:
        print("\npy-spy, POST /public/traces under load, own samples on top of the stack:")
        print("\n".join(top))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(
        json.dumps(
            {
                "body_bytes": {"json": len(body), "otlp_1k": len(otlp_1k), "otlp_16k": len(otlp_16k)},
                "connections": args.connections,
                "seconds": args.seconds,
                "workers": args.workers,
                "peak_rss_mib": rss,
                "cases": {c.name: asdict(c) | {"cpu_ms_per_trace": c.cpu_ms_per_trace} for c in cases},
                "profile_top": top,
            },
            indent=2,
        )
    )
    bad = [c.name for c in cases if c.non2xx or c.socket_errors or c.requests == 0]
    if bad:
        raise SystemExit(f"answers other than 2xx (or socket errors) in: {bad}")


if __name__ == "__main__":
    main()
