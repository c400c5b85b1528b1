"""Upload bench: peak memory of the ingest process under many concurrent large bodies, beside a
bare aiohttp handler measured in the same run.

    .venv/bin/python -m bench.uploads [--uploads 64] [--mib 10] [--inflight-mib 64]

Uses the stack of ``.devstack/env`` (``mibo-ingest dev up --no-services``), or the
``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` already in the environment. ``--uploads`` clients
each POST one body of ``--mib`` MiB (a ``{"data": "..."}`` trace of random text, just under
``MAX_BODY_BYTES``) to 127.0.0.1 at the same moment; a client answered 503 waits for
``Retry-After`` and sends again, until every body was accepted. Three servers, one after the
other, each its own process with its peak RSS (VmHWM) reset before its run:

- a bare aiohttp handler (read the body with ``request.read()``, answer 202; its
  ``client_max_size`` is ``MAX_BODY_BYTES``) — the floor;
- ``python -m ingest_api`` with ``MAX_INFLIGHT_BYTES`` so large it never refuses — what the
  process grows to without the budget;
- ``python -m ingest_api`` with ``MAX_INFLIGHT_BYTES`` = ``--inflight-mib`` (the default is the
  setting's default) — the bound.

Prints one table (peak RSS, time until all were accepted, 503 answers) and writes
``bench/results/uploads.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import string
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from bench.ingest import bench_key, load_env_file, wait_http
from shared.devstack.pipeline import free_port
from shared.runtime.kafka import ensure_topics
from shared.runtime.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INFLIGHT = Settings.from_env({}).max_inflight_bytes
UNBOUNDED = 1 << 40


@dataclass
class Run:
    target: str
    peak_rss_mib: float
    idle_rss_mib: float
    seconds: float
    accepted: int
    busy_answers: int
    other: dict[str, int]


def serve_bare(port: int, max_body: int) -> None:
    """The baseline server (``python -m bench.uploads --serve-bare PORT``)."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"success": True, "data": {"status": "queued"}}, status=202)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=max_body + 1)
    app.router.add_post("/public/traces", handle)
    app.router.add_get("/healthz", healthz)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def body_of(mib: int) -> bytes:
    """A legacy-shape trace of random text, ``mib`` MiB minus a little (so it fits the limit)."""
    size = mib * 1024 * 1024 - 64
    alphabet = (string.ascii_letters + string.digits).encode()
    text = bytes(alphabet[b % len(alphabet)] for b in secrets.token_bytes(size - 12))
    body = b'{"data": "' + text + b'"}'
    assert len(body) == size
    return body


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


async def upload_all(
    url: str, body: bytes, headers: dict[str, str], uploads: int
) -> tuple[int, int, dict[str, int]]:
    """Every client sends until accepted (503: after Retry-After). (accepted, 503s, others)."""
    busy = 0
    others: dict[str, int] = {}
    start = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=uploads)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> bool:
            nonlocal busy
            await start.wait()
            for _ in range(200):
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 202:
                        return True
                    if resp.status == 503:
                        busy += 1
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        continue
                    others[str(resp.status)] = others.get(str(resp.status), 0) + 1
                    return False
            return False

        tasks = [asyncio.create_task(client()) for _ in range(uploads)]
        await asyncio.sleep(0.1)
        start.set()
        accepted = sum(await asyncio.gather(*tasks))
    return accepted, busy, others


def measure(
    target: str,
    command: list[str],
    env: dict[str, str],
    port: int,
    ready: str,
    body: bytes,
    headers: dict[str, str],
    uploads: int,
) -> Run:
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}{ready}")
        # one small request first: connections, producer metadata, key registry warm
        asyncio.run(upload_all(f"http://127.0.0.1:{port}/public/traces", b'{"data": 1}', headers, 1))
        time.sleep(0.5)
        idle = status_kib(proc.pid, "VmRSS") / 1024
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        began = time.perf_counter()
        accepted, busy, others = asyncio.run(
            upload_all(f"http://127.0.0.1:{port}/public/traces", body, headers, uploads)
        )
        seconds = time.perf_counter() - began
        peak = status_kib(proc.pid, "VmHWM") / 1024
    finally:
        proc.terminate()
        proc.wait(60)
    return Run(target, peak, idle, seconds, accepted, busy, others)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploads", type=int, default=64, help="concurrent clients, one body each")
    parser.add_argument("--mib", type=int, default=10, help="body size in MiB")
    parser.add_argument(
        "--inflight-mib",
        type=float,
        default=DEFAULT_INFLIGHT / (1024 * 1024),
        help="MAX_INFLIGHT_BYTES of the bounded run, in MiB",
    )
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, Settings.from_env().max_body_bytes)
        return
    if not (os.environ.get("DATABASE_URL") and os.environ.get("KAFKA_BOOTSTRAP_SERVERS")):
        load_env_file()
    os.environ.setdefault("KAFKA_TOPIC_PREFIX", "bench-uploads.")
    settings = Settings.from_env()
    asyncio.run(ensure_topics(settings))
    key = asyncio.run(bench_key(settings))
    headers = {"Content-Type": "application/json", "x-api-key": key}
    body = body_of(args.mib)
    base_env = os.environ | {"INGEST_HOST": "127.0.0.1", "LOG_LEVEL": "warning", "LOG_FORMAT": "json"}
    inflight = int(args.inflight_mib * 1024 * 1024)
    runs = []
    port = free_port()
    runs.append(
        measure(
            "bare aiohttp handler (baseline)",
            [sys.executable, "-m", "bench.uploads", "--serve-bare", str(port)],
            base_env,
            port,
            "/healthz",
            body,
            headers,
            args.uploads,
        )
    )
    for label, budget in (
        ("ingest_api, no in-flight bound", UNBOUNDED),
        (f"ingest_api, MAX_INFLIGHT_BYTES {inflight >> 20} MiB", inflight),
    ):
        port = free_port()
        env = base_env | {"INGEST_PORT": str(port), "MAX_INFLIGHT_BYTES": str(budget)}
        runs.append(
            measure(
                label, [sys.executable, "-m", "ingest_api"], env, port, "/readyz", body, headers, args.uploads
            )
        )

    print(f"\nupload bench: {args.uploads} concurrent uploads of {len(body) / 2**20:.2f} MiB to 127.0.0.1, "
          f"{os.cpu_count()} cores; every client retries 503 after Retry-After until accepted\n")  # fmt: skip
    print(
        "| server | peak RSS MiB | idle RSS MiB | (peak - idle) per upload MiB | all accepted in s | 503 answers | other |"
    )
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        per = (run.peak_rss_mib - run.idle_rss_mib) / args.uploads
        print(
            f"| {run.target} | {run.peak_rss_mib:,.0f} | {run.idle_rss_mib:,.0f} | {per:.1f} | {run.seconds:.1f} | "
            f"{run.busy_answers} | {run.other or '-'} |"
        )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "uploads.json").write_text(
        json.dumps(
            {"uploads": args.uploads, "body_bytes": len(body), "runs": [asdict(r) for r in runs]}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
