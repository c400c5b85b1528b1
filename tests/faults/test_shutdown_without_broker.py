"""SIGTERM while the broker is gone and traces answered 503 are still in the producer's buffer:
the ingest process ends within ``SHUTDOWN_TIMEOUT_SECONDS`` all the same, and the outage does not
flood its log. It stops the session's broker and starts it again before it ends, waiting until
it answers, so it depends on no test order."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from shared.devstack import processes
from shared.devstack.pipeline import Tenant, start_ingest
from shared.runtime.kafka import kafka_ready
from shared.runtime.settings import Settings
from tests.services import Services

BODY = b'{"data": {"input": "...", "output": "..."}}'
BOUND = 6.0


async def test_shutdown_is_bounded_while_the_broker_is_gone(
    services: Services, settings: Settings, tenant: Tenant, tmp_path: Path
) -> None:
    if services.stack is None:
        pytest.skip("stopping the broker needs the project's local stack (services came from elsewhere)")
    from shared.devstack.stack import Stack

    stack = services.stack
    assert isinstance(stack, Stack)
    service = start_ingest(
        settings, tmp_path, PRODUCE_TIMEOUT_SECONDS="1", SHUTDOWN_TIMEOUT_SECONDS=str(BOUND)
    )
    headers = {"x-api-key": tenant.keys["all"], "Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(service.url + "/public/traces", data=BODY, headers=headers) as resp:
                assert resp.status == 202
            pid = processes.running(stack.broker.pidfile)
            assert pid
            processes.stop(pid, sig=9, timeout=10)  # kill -9 the broker
            for _ in range(3):  # each stays in the producer's buffer, unacknowledged
                async with session.post(service.url + "/public/traces", data=BODY, headers=headers) as resp:
                    assert resp.status == 503
        await asyncio.sleep(4)  # the outage goes on: the clients keep retrying, and logging
        sent = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(service.stop, BOUND + 20)
        took = time.monotonic() - sent
    finally:
        service.stop()
        if not processes.running(stack.broker.pidfile):
            stack.broker.start()
        deadline = time.monotonic() + 90
        while not await kafka_ready(settings.kafka_bootstrap_servers):  # leave the broker as found
            assert time.monotonic() < deadline, "the broker did not come back"
            await asyncio.sleep(1)
    assert took < BOUND + 2, f"SIGTERM to exit took {took:.1f} s (bound {BOUND} s)"
    lines = [json.loads(line) for line in service.log.read_text().splitlines() if line.strip()]
    # exit 0 after a complete drain; 1 when the drain or the teardown ran out of time, said in the log
    events = [r["event"] for r in lines]
    if code == 0:  # (after "stopped": the last rate-limit windows' counts, written at exit)
        assert "stopped" in events, events[-5:]
    else:
        assert code == 1, code
        assert {
            "drain did not finish in time; exiting without it",
            "shutdown did not finish in time; forcing exit",
        } & set(events), events[-5:]
    from_kafka = [r for r in lines if str(r.get("logger", "")).startswith("aiokafka")]
    assert len(from_kafka) < 40, f"{len(from_kafka)} aiokafka lines in ~{BOUND + 6:.0f} s of outage"
