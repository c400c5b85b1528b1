"""Kafka away: the API answers 503 with Retry-After — never a 202 without an ack — and recovers
by itself when the broker is back. Runs last: it stops the session's broker."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest

from shared.devstack import processes
from shared.devstack.pipeline import Tenant, TopicTap, start_ingest
from shared.runtime.settings import Settings
from tests.services import Services

BODY = b'{"data": {"input": "...", "output": "..."}}'


async def test_stopped_broker_means_503_then_recovery(
    services: Services, settings: Settings, tenant: Tenant, raw_tap: TopicTap, service_logs
) -> None:  # type: ignore[no-untyped-def]
    if services.stack is None:
        pytest.skip("stopping the broker needs the project's local stack (services came from elsewhere)")
    from shared.devstack.stack import Stack

    stack = services.stack
    assert isinstance(stack, Stack)
    service = start_ingest(settings, service_logs, PRODUCE_TIMEOUT_SECONDS="2")
    run = uuid.uuid4().hex
    accepted: list[str] = []

    async def post(session: aiohttp.ClientSession, i: int) -> tuple[int, dict[str, str]]:
        async with session.post(
            service.url + "/public/traces",
            data=BODY,
            headers={
                "x-api-key": tenant.keys["all"],
                "x-request-id": f"{run}-{i}",
                "Content-Type": "application/json",
            },
        ) as resp:
            body = await resp.json()
            if resp.status == 202:
                accepted.append(f"{run}-{i}")
            else:
                assert resp.status == 503, body
                assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
                assert int(resp.headers["Retry-After"]) > 0
            return resp.status, dict(resp.headers)

    try:
        async with aiohttp.ClientSession() as session:
            assert (await post(session, 0))[0] == 202
            pid = processes.running(stack.broker.pidfile)
            assert pid
            processes.stop(pid, sig=9, timeout=10)  # kill -9 the broker

            statuses = [(await post(session, i))[0] for i in range(1, 4)]
            assert statuses == [503, 503, 503]

            stack.broker.start()
            deadline = time.monotonic() + 90
            i, status = 10, 503
            while status != 202:
                assert time.monotonic() < deadline, "ingest did not recover after the broker came back"
                status, _ = await post(session, i)
                i += 1
                await asyncio.sleep(0.5)
    finally:
        service.stop()
        if not processes.running(stack.broker.pidfile):
            stack.broker.start()

    keys = {f"{tenant.project_id}:{ext}".encode() for ext in accepted}
    assert await raw_tap.wait_for_keys(keys) == keys  # no 202 without the record in Kafka
