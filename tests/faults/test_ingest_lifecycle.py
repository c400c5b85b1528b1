"""The ingest process's life: graceful SIGTERM, several processes on one port."""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from pathlib import Path

import aiohttp

from shared.devstack.pipeline import Tenant, TopicTap, start_ingest
from shared.runtime.settings import Settings

BODY = b'{"data": {"input": "...", "output": "..."}}'


async def test_sigterm_finishes_in_flight_requests(
    settings: Settings, tenant: Tenant, raw_tap: TopicTap, service_logs: Path
) -> None:
    service = start_ingest(settings, service_logs)
    run = uuid.uuid4().hex
    accepted: list[str] = []
    refused = 0
    first_answer = asyncio.Event()

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal refused
        try:
            async with session.post(
                service.url + "/public/traces",
                data=BODY,
                headers={
                    "x-api-key": tenant.keys["all"],
                    "x-request-id": f"{run}-{i}",
                    "Content-Type": "application/json",
                },
            ) as resp:
                assert resp.status == 202, await resp.text()
                accepted.append(f"{run}-{i}")
                first_answer.set()
        except aiohttp.ClientConnectionError:
            refused += 1  # arrived after the listener closed: never answered 202

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(one(session, i)) for i in range(300)]
        await first_answer.wait()
        service.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
    assert await asyncio.to_thread(service.proc.wait, 30) == 0
    assert accepted, "no request was answered before the shutdown"
    assert len(accepted) + refused == 300
    keys = {f"{tenant.project_id}:{ext}".encode() for ext in accepted}
    assert await raw_tap.wait_for_keys(keys) == keys  # every 202 is in Kafka
    assert "draining" in service.log.read_text()


async def test_two_workers_share_one_port(settings: Settings, tenant: Tenant, service_logs: Path) -> None:
    service = start_ingest(settings, service_logs, INGEST_WORKERS="2")
    try:
        for _ in range(40):
            async with aiohttp.ClientSession() as session:  # a new connection each time
                async with session.post(
                    service.url + "/public/traces",
                    data=BODY,
                    headers={"x-api-key": tenant.keys["all"], "Content-Type": "application/json"},
                ) as resp:
                    assert resp.status == 202
        # both processes write to one log file, so their lines may interleave: match records, not lines
        text = service.log.read_text()
        listening = set(re.findall(r'"pid": (\d+), "event": "ingest api listening"', text))
        assert len(listening) == 2, text[-2000:]
    finally:
        assert service.stop() == 0
