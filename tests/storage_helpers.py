"""Helpers for the storage worker's tests: routed envelopes for a tenant, a producer that waits
for acknowledgements, polling, and ConsumerRecords built in memory for the pure unit tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from shared.contracts.envelope import Hints, RawEnvelope, RoutedEnvelope, encode, message_key, routed
from shared.contracts.ids import uuid7
from shared.devstack.pipeline import Tenant
from shared.registry.validation import one
from shared.runtime.kafka import Record, make_producer
from shared.runtime.settings import Settings

SEED_BODY = b'{ "data": { "input": "...", "output": "..." } }'


def body(text: str = "hello", **extra: Any) -> bytes:
    return msgspec.json.encode({"data": {"input": text, "output": "..."}, **extra})


def routed_envelope(
    tenant: Tenant,
    *,
    raw_body: bytes = SEED_BODY,
    external_id: str | None = None,
    received_at: dt.datetime | None = None,
    key: str = "all",
    platform: uuid.UUID | None = None,
    trace_id: uuid.UUID | None = None,
) -> RoutedEnvelope:
    when = received_at or dt.datetime.now(dt.UTC)
    raw = RawEnvelope(
        trace_id=trace_id or uuid7(int(when.timestamp() * 1000)),
        received_at=when,
        project_id=tenant.project_id,
        key_id=tenant.key_ids[key],
        key_restricted=key != "all",
        key_scope=[] if key == "all" else [tenant.n8n],
        external_id=external_id,
        shape="data",
        platform_id=None,
        hints=Hints(),
        body=msgspec.Raw(raw_body),
    )
    return routed(raw, platform or tenant.http, "explicit")


def key_of(envelope: RawEnvelope) -> bytes:
    return message_key(envelope.project_id, envelope.external_id, envelope.trace_id)


async def produce(settings: Settings, topic: str, envelopes: Iterable[RoutedEnvelope]) -> None:
    """Write envelopes to ``topic`` with the contract's keys; returns once all are acknowledged."""
    producer: AIOKafkaProducer = make_producer(settings)
    await producer.start()
    try:
        futures = [await producer.send(topic, encode(e), key=key_of(e)) for e in envelopes]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or check}")
        await asyncio.sleep(interval)


def consumer_record(
    value: bytes | None, *, key: bytes | None = b"k", offset: int = 0, headers: Any = ()
) -> Record:
    return ConsumerRecord(
        topic="traces.routed",
        partition=0,
        offset=offset,
        timestamp=int(time.time() * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=tuple(headers),
    )


async def stream(
    settings: Settings, topic: str, envelopes: list[RoutedEnvelope], chunk: int = 100, pause: float = 0.05
) -> None:
    """A steady stream: ``chunk`` envelopes at a time, acknowledged, then a pause."""
    producer: AIOKafkaProducer = make_producer(settings)
    await producer.start()
    try:
        for start in range(0, len(envelopes), chunk):
            part = envelopes[start : start + chunk]
            futures = [await producer.send(topic, encode(e), key=key_of(e)) for e in part]
            await asyncio.gather(*futures)
            await asyncio.sleep(pause)
    finally:
        await producer.stop()


async def count_stored(settings: Settings, ids: list[uuid.UUID]) -> tuple[int, int]:
    """(rows, distinct ids) among ``ids``, on a fresh connection (fault tests restart the server)."""
    import psycopg

    from shared.runtime.settings import libpq_url

    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True, connect_timeout=3
    ) as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT id) FROM traces WHERE id = ANY(%s)", (ids,))
        rows, distinct = one(await cur.fetchone())
        return rows, distinct
