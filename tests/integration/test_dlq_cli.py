"""`mibo-ingest dlq tail | stats` on the real dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from shared.contracts.topics import Topics
from shared.devstack.pipeline import Service, TopicTap, make_tenant, service_env
from shared.runtime.settings import Settings
from tests.router_helpers import post


def cli(settings: Settings, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "shared.ops.cli.main", "dlq", *args],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_tail_and_stats_filter_by_key_and_reason(
    settings: Settings, ingest: Service, router: Service, dlq_tap: TopicTap
) -> None:
    tenant = await make_tenant(settings)
    ambiguous = [await post(ingest, tenant.keys["all"], {"data": i}) for i in range(3)]
    missing = await post(
        ingest, tenant.keys["all"], {"data": 1, "platformId": "00000000-0000-4000-8000-000000000000"}
    )
    keys = {f"{tenant.project_id}:{t}".encode() for t in [*ambiguous, missing]}
    assert await dlq_tap.wait_for_keys(keys) == keys

    key_id = str(tenant.key_ids["all"])
    lines = await asyncio.to_thread(cli, settings, "tail", "--json", "--key-id", key_id)
    entries = [json.loads(line) for line in lines.splitlines()]
    assert sorted(e["trace_id"] for e in entries) == sorted([*ambiguous, missing])
    assert {e["reason"] for e in entries} == {"platform_ambiguous", "platform_not_found"}
    assert all(e["stage"] == "router" and e["detail"] and e["attempt"] == 1 for e in entries)
    only = await asyncio.to_thread(
        cli, settings, "tail", "--json", "--key-id", key_id, "--reason", "platform_not_found"
    )
    assert [json.loads(line)["trace_id"] for line in only.splitlines()] == [missing]

    stats = json.loads(
        await asyncio.to_thread(cli, settings, "stats", "--from-topic", "--json", "--key-id", key_id)
    )  # the topic itself (the index's stats: test_receipts.py)
    assert stats["total"] == 4
    assert stats["reason"] == {"platform_ambiguous": 3, "platform_not_found": 1}
    assert stats["key"] == {key_id: 4} and stats["age"] == {"< 1 h": 4}

    human = await asyncio.to_thread(cli, settings, "tail", "--key-id", key_id)
    assert "platform_ambiguous" in human and "could be any of" in human
    assert tenant.keys["all"] not in human + lines  # never a key


async def test_kcat_reads_the_same_headers(
    settings: Settings, topics: Topics, ingest: Service, router: Service, dlq_tap: TopicTap
) -> None:
    import shutil

    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    assert kcat, "kcat is installed by `make` (Debian package kcat)"
    tenant = await make_tenant(settings)
    trace = await post(ingest, tenant.keys["all"], {"data": 1})
    key = f"{tenant.project_id}:{trace}".encode()
    await dlq_tap.wait_for(key)
    out = await asyncio.to_thread(
        subprocess.run,
        [kcat, "-b", settings.kafka_bootstrap_servers, "-C", "-t", topics.dlq, "-e", "-q", "-f", "%k %h\\n"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith(key.decode()))
    assert (
        "dlq-reason=platform_ambiguous" in line and "dlq-stage=router" in line and "dlq-candidates=" in line
    )
