"""Producing raw envelopes straight to traces.raw, for volume tests of the workers, and posting a
trace through the API."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import aiohttp
import msgspec

from shared.contracts.envelope import Hints, RawEnvelope, encode, message_key
from shared.contracts.ids import uuid7
from shared.contracts.topics import Topics
from shared.devstack.pipeline import Service, Tenant
from shared.runtime.kafka import make_producer
from shared.runtime.settings import Settings


def raw_envelopes(
    tenant: Tenant, count: int, body: bytes = b'{"data": {"input": "..."}}'
) -> list[RawEnvelope]:
    """Envelopes as the ingest API writes them, from the tenant's key restricted to its n8n platform."""
    return [
        RawEnvelope(
            trace_id=uuid7(),
            received_at=dt.datetime.now(dt.UTC),
            project_id=tenant.project_id,
            key_id=tenant.key_ids["n8n"],
            key_restricted=True,
            key_scope=[tenant.n8n],
            external_id=None,
            shape="data",
            platform_id=None,
            hints=Hints(),
            body=msgspec.Raw(body),
        )
        for _ in range(count)
    ]


def keys_of(envelopes: list[RawEnvelope]) -> set[bytes]:
    return {message_key(e.project_id, e.external_id, e.trace_id) for e in envelopes}


async def produce_raw(settings: Settings, topics: Topics, envelopes: list[RawEnvelope]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topics.raw, encode(e), key=message_key(e.project_id, e.external_id, e.trace_id)
            )
            for e in envelopes
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def post(ingest: Service, key: str, body: dict) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            ingest.url + "/public/traces",
            data=json.dumps(body),
            headers={"x-api-key": key, "Content-Type": "application/json"},
        ) as resp:
            answer = await resp.json()
            assert resp.status == 202, answer
            return answer["data"]["id"]
