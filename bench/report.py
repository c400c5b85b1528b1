"""The load report (``make bench``): every benchmark beside its bare baseline, in one run.

Runs bench/ingest.py (single and batch endpoint), bench/router.py, bench/storage.py and
bench/e2e.py one after the other against the stack of ``.devstack/env``, then prints one Markdown
table (rates, baselines, ratios, p50/p99 where measured, peak RSS per process) and writes it to
``bench/results/report.md`` and ``bench/results/report.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def run(script: str, *args: str) -> float:
    """Run one benchmark; returns its own peak RSS in MiB (the bench process, not its servers)."""
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{script}", *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed with exit code {proc.returncode}")
    return usage.ru_maxrss / 1024


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def main() -> int:
    started = time.time()
    rss = {
        "ingest": run("ingest", "--seconds", "10"),
        "router": run("router", "--count", "50000"),
        "storage": run("storage", "--count", "20000"),
        "e2e": run("e2e", "--count", "20000"),
    }
    ingest, router, storage, e2e = load("ingest"), load("router"), load("storage"), load("e2e")
    rows = [
        ("ingest: POST /public/traces (1 KB, 64 conns)", f"{ingest['ingest']['rate']:,.0f} req/s",
         f"{ingest['baseline']['rate']:,.0f} (bare aiohttp handler)", f"{ingest['ratio']:.2f}",
         f"{ingest['ingest']['p50_ms']:.1f} / {ingest['ingest']['p99_ms']:.1f}",
         f"ingest {ingest['ingest']['peak_rss_mib']:.0f}"),
        ("ingest: POST /public/traces/batch (100 a request)", f"{ingest['batch']['traces_per_second']:,.0f} traces/s",
         f"{ingest['ingest']['rate']:,.0f} (single endpoint)",
         f"{ingest['batch']['traces_per_second'] / ingest['ingest']['rate']:.2f}",
         f"- / {ingest['batch']['p99_ms']:.1f}", "-"),
        ("router: decode → resolve → produce → commit", f"{router['router_rate']:,.0f} msg/s",
         f"{router['baseline_rate']:,.0f} (bare consume → produce)", f"{router['ratio']:.2f}", "-",
         f"bench {rss['router']:.0f}"),
        ("storage: decode → collapse → COPY → upsert", f"{storage['write_path_rate']:,.0f} rows/s",
         f"{storage['copy_rate']:,.0f} (plain COPY)", f"{storage['ratio']:.2f}", "-", f"bench {rss['storage']:.0f}"),
        ("end to end: API → router → storage → rows", f"{e2e['pipeline_rate']:,.0f} traces/s",
         f"{e2e['baseline_rate']:,.0f} (produce → consume → COPY)", f"{e2e['ratio']:.2f}", "-",
         ", ".join(f"{k} {v:.0f}" for k, v in e2e["peak_rss_mib"].items())),
    ]  # fmt: skip
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    lines = [
        f"Machine: {machine}; Kafka and PostgreSQL of the local stack on the same machine.",
        "",
        "| benchmark | rate | baseline (same run) | ratio | p50 / p99 ms | peak RSS MiB |",
        "|---|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
    ]
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report.md").write_text(table + "\n")
    summary = {
        "machine": machine,
        "seconds": time.time() - started,
        "ingest": ingest,
        "router": router,
        "storage": storage,
        "e2e": e2e,
        "bench_process_rss_mib": rss,
    }
    (RESULTS / "report.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
