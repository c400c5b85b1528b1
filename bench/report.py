"""The load report (``make bench``): every benchmark beside its bare baseline, in one run.

Runs bench/ingest.py (bare handler, JSON, OTLP 1 KB and 16 KB, batch; with a py-spy profile),
bench/router.py, bench/storage.py and bench/e2e.py (a sustained 60 s load through the pipeline, 10,000 traces/s offered:
below what the pipeline stores, so lag stays bounded and freshness means something)
one after the other against the stack of ``.devstack/env``, then prints Markdown tables — CPU
per request or trace beside the bare baseline of the same run (the figure that holds on a shared
machine), rates, p50/p99, RSS, lag and freshness — checks issue 16's first bar, and writes
``bench/results/report.md`` and ``bench/results/report.json``. Every child run is bounded.

    .venv/bin/python -m bench.report [--e2e-seconds 60] [--e2e-rate 10000] [--skip router,storage]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# Issue 16's first bar for the ingest API and the pipeline (CPU ms per request unless said).
FIRST_BAR = {
    "json_1k": 0.16,
    "otlp_1k": 0.20,
    "otlp_16k": 0.40,
}
BATCH_TRACES_PER_S = 30_000
P99_MS = 25.0
RSS_MIB = 100.0
E2E_STORED_PER_S = 5_000
FRESHNESS_P99_S = 2.0


def run(script: str, *args: str, timeout: float = 900) -> bool:
    """Run one benchmark, bounded in time; False when it failed (its results file, if written,
    is still reported: e2e writes its figures before failing on a missed check)."""
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{script}", *args], cwd=ROOT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(30)
        print(f"{script} ran longer than {timeout:g} s", flush=True)
        return False
    if proc.returncode != 0:
        print(f"{script} failed with exit code {proc.returncode}", flush=True)
    return proc.returncode == 0


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def verdict(ok: bool) -> str:
    return "holds" if ok else "**misses**"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ingest-seconds", default="10")
    parser.add_argument("--e2e-seconds", default="60")
    parser.add_argument(
        "--e2e-rate",
        default="10000",
        help="traces/s the e2e load offers (0: as fast as ingest answers, which outruns storage: lag grows)",
    )
    parser.add_argument("--skip", default="", help="comma-separated: router, storage, e2e")
    parser.add_argument("--reuse", action="store_true", help="run nothing: tabulate bench/results/*.json")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    started = time.time()
    if args.reuse:
        ok = {"reused": True}
        skip |= {name for name in ("router", "storage", "e2e") if not (RESULTS / f"{name}.json").exists()}
    else:
        ok = measure(args, skip)
    return tabulate(ok, skip, started)


def measure(args: argparse.Namespace, skip: set[str]) -> dict[str, bool]:
    (RESULTS / "e2e.json").unlink(missing_ok=True)
    ok = {"ingest": run("ingest", "--seconds", args.ingest_seconds, "--profile")}
    if "router" not in skip:
        ok["router"] = run("router", "--count", "50000")
    if "storage" not in skip:
        ok["storage"] = run("storage", "--count", "20000")
    if "e2e" not in skip:
        ok["e2e"] = run(
            "e2e",
            "--seconds",
            args.e2e_seconds,
            "--rate",
            args.e2e_rate,
            timeout=float(args.e2e_seconds) + 600,
        )
        if not (RESULTS / "e2e.json").exists():
            skip.add("e2e")
    return ok


def tabulate(ok: dict[str, bool], skip: set[str], started: float) -> int:
    ingest = load("ingest")
    cases = ingest["cases"]
    bare = cases["bare"]["cpu_ms_per_request"]
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    lines = [
        f"Machine: {machine}; Kafka and PostgreSQL of the local stack on the same machine; wrk drives "
        f"the HTTP load. CPU per request = utime+stime of the server process(es) / 2xx answers.",
        "",
        f"Ingest ({ingest['workers']} process, {ingest['connections']} connections, "
        f"{ingest['seconds']:g} s a case; peak RSS {ingest['peak_rss_mib']:.0f} MiB):",
        "",
        "| case | CPU ms/request | CPU ms/trace | x bare (same run) | req/s | traces/s | p50 / p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in cases.items():
        lines.append(
            f"| {name} | {c['cpu_ms_per_request']:.3f} | {c['cpu_ms_per_trace']:.4f} | "
            f"{c['cpu_ms_per_request'] / bare:.2f} | {c['rate']:,.0f} | "
            f"{c['rate'] * c['traces_per_request']:,.0f} | {c['p50_ms']:.1f} / {c['p99_ms']:.1f} |"
        )
    bar: list[tuple[str, str, str, bool]] = []
    for name, limit in FIRST_BAR.items():
        if name in cases:
            got = cases[name]["cpu_ms_per_request"]
            bar.append((f"ingest {name} CPU ms/request", f"≤ {limit}", f"{got:.3f}", got <= limit))
    if "batch_100x1k" in cases:
        got = cases["batch_100x1k"]["rate"] * cases["batch_100x1k"]["traces_per_request"]
        bar.append(
            ("batch endpoint traces/s", f"≥ {BATCH_TRACES_PER_S:,}", f"{got:,.0f}", got >= BATCH_TRACES_PER_S)
        )
    if "json_1k" in cases:
        got = cases["json_1k"]["p99_ms"]
        bar.append(
            ("p99 at 64 connections, 1 KB, one process", f"≤ {P99_MS:g} ms", f"{got:.1f}", got <= P99_MS)
        )
    bar.append(
        (
            "ingest RSS under load",
            f"< {RSS_MIB:g} MiB",
            f"{ingest['peak_rss_mib']:.0f}",
            ingest["peak_rss_mib"] < RSS_MIB,
        )
    )
    summary: dict[str, Any] = {"machine": machine, "ingest": ingest}
    if "router" not in skip:
        router = summary["router"] = load("router")
        lines += ["", "| router | rate | bare consume → produce | ratio |", "|---|---|---|---|",
                  f"| decode → resolve → produce → commit | {router['router_rate']:,.0f} msg/s | "
                  f"{router['baseline_rate']:,.0f} | {router['ratio']:.2f} |"]  # fmt: skip
    if "storage" not in skip:
        storage = summary["storage"] = load("storage")
        lines += ["", "| storage | rate | plain COPY | ratio |", "|---|---|---|---|",
                  f"| decode → collapse → COPY → upsert | {storage['write_path_rate']:,.0f} rows/s | "
                  f"{storage['copy_rate']:,.0f} | {storage['ratio']:.2f} |"]  # fmt: skip
    if "e2e" not in skip:
        e2e = summary["e2e"] = load("e2e")
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in e2e["cpu_ms_per_trace"].items())
        lines += [
            "",
            f"End to end, sustained {e2e['load_seconds']:.0f} s, offered {e2e.get('offered_rate') or 'all it takes'}"
            f" traces/s ({e2e['endpoint']}, {e2e['traces_per_request']} a "
            f"request, {e2e['connections']} connections, {e2e['workers']} ingest process(es)):",
            "",
            "| what | value |",
            "|---|---|",
            f"| bare produce → consume → COPY (baseline) | {e2e['baseline_rate']:,.0f} traces/s |",
            f"| acknowledged during the load | {e2e['accepted_rate']:,.0f} traces/s |",
            f"| stored, load start → last row | {e2e['stored_rate']:,.0f} traces/s (drain {e2e['drain_seconds']:.1f} s) |",
            f"| lag, max of 2 s samples | {e2e['max_lag']:,.0f} traces |",
            f"| freshness 202 → readable p50 / p99 | {e2e['freshness_p50_s'] * 1000:.0f} / {e2e['freshness_p99_s'] * 1000:.0f} ms |",
            f"| CPU ms per stored trace | {cpu} |",
            "| peak RSS MiB | " + ", ".join(f"{k} {v:.0f}" for k, v in e2e["peak_rss_mib"].items()) + " |",
        ]  # fmt: skip
        bar.append(("e2e stored traces/s", f"≥ {E2E_STORED_PER_S:,}", f"{e2e['stored_rate']:,.0f}",
                    e2e["stored_rate"] >= E2E_STORED_PER_S))  # fmt: skip
        bar.append(("e2e lag bounded: drained within", "≤ 5 s", f"{e2e['drain_seconds']:.1f}",
                    e2e["drain_seconds"] <= 5))  # fmt: skip
        bar.append(("e2e freshness p99", f"< {FRESHNESS_P99_S:g} s", f"{e2e['freshness_p99_s']:.2f}",
                    e2e["freshness_p99_s"] < FRESHNESS_P99_S))  # fmt: skip
    lines += ["", "Issue 16, first bar:", "", "| target | bar | this run | |", "|---|---|---|---|"]
    lines += [f"| {name} | {limit} | {got} | {verdict(held)} |" for name, limit, got, held in bar]
    if ingest.get("profile_top"):
        lines += [
            "",
            "py-spy, ingest under the JSON load, own samples (bench/results/ingest-json.folded):",
            "",
        ]
        lines += [f"    {line}" for line in ingest["profile_top"][:10]]
    table = "\n".join(lines)
    print("\n" + table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report.md").write_text(table + "\n")
    summary["seconds"] = time.time() - started
    summary["first_bar"] = [{"target": n, "bar": b, "got": g, "holds": held} for n, b, g, held in bar]
    summary["runs_ok"] = ok
    (RESULTS / "report.json").write_text(json.dumps(summary, indent=2))
    failed = [name for name, passed in ok.items() if not passed]
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
