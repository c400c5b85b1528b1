"""Replays through the real pipeline: the DLQ story (dead-lettered, configuration fixed, replayed,
stored once), re-runs that add nothing, and the offset bookkeeping that prevents double replays."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from shared import registry
from shared.contracts.dlq import read_headers
from shared.devstack.pipeline import Service, TopicTap, make_tenant, service_env
from shared.runtime.settings import Settings, libpq_url
from tests.router_helpers import post


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "shared.ops.cli.main", *args],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out


async def rows_of(settings: Settings, trace_id: str) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(libpq_url(settings.database_url)) as conn:
        cur = await conn.execute("SELECT id, platform_id FROM traces WHERE id = %s", (uuid.UUID(trace_id),))
        return await cur.fetchall()


async def wait_rows(settings: Settings, trace_id: str, timeout: float = 30) -> list[tuple]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if rows := await rows_of(settings, trace_id):
            return rows
        await asyncio.sleep(0.2)
    return []


async def test_ambiguous_trace_fixed_replayed_and_stored_once(
    settings: Settings,
    ingest: Service,
    router: Service,
    storage: Service,
    dlq_tap: TopicTap,
    routed_tap: TopicTap,
) -> None:
    tenant = await make_tenant(settings)
    workflow = f"wf-story-{uuid.uuid4().hex[:6]}"
    trace = await post(
        ingest, tenant.keys["all"], {"data": {"input": "hi"}, "metadata": {"workflowId": workflow}}
    )
    key = f"{tenant.project_id}:{trace}".encode()
    dead = await dlq_tap.wait_for(key)
    assert read_headers(dead.headers)["dlq-reason"] == "platform_ambiguous"
    key_id = str(tenant.key_ids["all"])

    before = cli(settings, "dlq", "replay", "--dry-run", "--key-id", key_id)
    assert "dead-letter again: platform_ambiguous" in before.stdout
    assert "1 record(s) would be replayed" in before.stderr

    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        await registry.update_platform(conn, tenant.project_id, tenant.n8n, workflow_id=workflow)
    after = cli(settings, "dlq", "replay", "--dry-run", "--key-id", key_id)
    assert "route to n8n prod (hint)" in after.stdout
    assert await rows_of(settings, trace) == []  # a dry run changes nothing

    done = cli(settings, "dlq", "replay", "--key-id", key_id)
    assert "replayed 1 record(s)" in done.stderr
    assert await wait_rows(settings, trace) == [(uuid.UUID(trace), tenant.n8n)]
    assert (await routed_tap.wait_for(key)).topic.endswith("traces.routed")

    again = cli(settings, "dlq", "replay", "--key-id", key_id)
    assert "replayed 0 record(s)" in again.stderr and "1 skipped" in again.stderr
    forced = cli(settings, "dlq", "replay", "--again", "--key-id", key_id, "--json")
    assert "replayed 1 record(s)" in forced.stderr
    assert json.loads(forced.stdout.splitlines()[0])["now"] == "route to n8n prod (hint)"
    await asyncio.sleep(3)
    assert await rows_of(settings, trace) == [(uuid.UUID(trace), tenant.n8n)]  # still exactly one row


async def test_replayed_record_dead_lettered_again_counts_its_attempt(
    settings: Settings, ingest: Service, router: Service, dlq_tap: TopicTap
) -> None:
    tenant = await make_tenant(settings)
    trace = await post(ingest, tenant.keys["all"], {"data": 1})
    key = f"{tenant.project_id}:{trace}".encode()
    await dlq_tap.wait_for(key)
    cli(settings, "dlq", "replay", "--key-id", str(tenant.key_ids["all"]))
    records = await dlq_tap.wait_for_all(lambda r: r.key == key, 2)
    attempts = sorted(read_headers(r.headers)["dlq-attempt"] for r in records)
    assert attempts == ["1", "2"]


async def count_rows(settings: Settings, project_id: uuid.UUID) -> int:
    async with await psycopg.AsyncConnection.connect(libpq_url(settings.database_url)) as conn:
        cur = await conn.execute("SELECT count(*) FROM traces WHERE project_id = %s", (project_id,))
        row = await cur.fetchone()
        return row[0] if row else 0


async def wait_count(settings: Settings, project_id: uuid.UUID, expected: int, timeout: float = 60) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while (
        n := await count_rows(settings, project_id)
    ) < expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.3)
    return n


async def test_replay_raw_time_range_after_a_routing_fix(
    settings: Settings, ingest: Service, router: Service, storage: Service, dlq_tap: TopicTap, tmp_path: Path
) -> None:
    import datetime as dt

    tenant = await make_tenant(settings)
    workflow = f"wf-redrive-{uuid.uuid4().hex[:6]}"
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    traces = [
        await post(ingest, tenant.keys["all"], {"data": i, "metadata": {"workflowId": workflow}})
        for i in range(5)
    ]
    keys = {f"{tenant.project_id}:{t}".encode() for t in traces}
    assert await dlq_tap.wait_for_keys(keys) == keys  # all ambiguous for now
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        await registry.update_platform(conn, tenant.project_id, tenant.n8n, workflow_id=workflow)

    checkpoint = tmp_path / "redrive.json"
    first = cli(
        settings, "replay", "raw", "--since", since, "--until", until, "--checkpoint", str(checkpoint)
    )
    assert "routed" in first.stderr
    assert await wait_count(settings, tenant.project_id, 5) == 5
    resumed = cli(
        settings, "replay", "raw", "--since", since, "--until", until, "--checkpoint", str(checkpoint)
    )
    assert "re-drove 0 record(s)" in resumed.stderr  # the checkpoint says it is all done
    cli(settings, "replay", "raw", "--since", since, "--until", until)  # no checkpoint: everything again
    await asyncio.sleep(3)
    assert await count_rows(settings, tenant.project_id) == 5  # and still no duplicate


async def test_replay_file_backfills_and_reruns_add_nothing(
    settings: Settings, ingest: Service, router: Service, storage: Service, tmp_path: Path
) -> None:
    tenant = await make_tenant(settings)
    archive = tmp_path / "traces.jsonl"
    lines = [json.dumps({"data": {"i": i}}) for i in range(200)]
    lines += [
        json.dumps({"externalId": f"ext-{i}", "spans": [{"span_id": "s", "name": "n"}]}) for i in range(50)
    ]
    lines += ["{not json", json.dumps({"data": None})]
    archive.write_text("\n".join(lines) + "\n")
    env = service_env(settings, MIBO_API_KEY=tenant.keys["n8n"])
    command = [
        sys.executable,
        "-m",
        "shared.ops.cli.main",
        "replay",
        "file",
        str(archive),
        "--url",
        ingest.url,
        "--batch",
        "40",
    ]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    first = await asyncio.to_thread(run)
    assert first.returncode == 1, first.stderr  # two lines were rejected
    assert "250 queued, 2 rejected" in first.stderr
    rejected = [
        json.loads(line) for line in (tmp_path / "traces.jsonl.rejected.jsonl").read_text().splitlines()
    ]
    assert sorted(r["line"] for r in rejected) == [251, 252]
    assert await wait_count(settings, tenant.project_id, 250) == 250

    again = await asyncio.to_thread(run)
    assert "0 queued" in again.stderr and "252 skipped before the checkpoint" in again.stderr
    (tmp_path / "traces.jsonl.checkpoint.json").unlink()
    resent = await asyncio.to_thread(run)
    assert "250 queued" in resent.stderr
    await asyncio.sleep(3)
    assert await count_rows(settings, tenant.project_id) == 250  # re-sent lines replaced themselves
    assert tenant.keys["n8n"] not in first.stderr + resent.stderr
