"""Reading the dead-letter topic for operators: each record described from its headers and the
envelope it carries (pure ``describe``), and a reader over every partition (``read``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import msgspec
from aiokafka import TopicPartition

from shared.contracts import dlq
from shared.contracts.envelope import RawEnvelope, decode_raw
from shared.runtime.kafka import Record, reader, refresh_metadata


class DlqEntry(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # where this DLQ record sits: topic/partition/offset
    key: str | None
    reason: str
    stage: str
    detail: str
    candidates: list[str]
    failed_at: dt.datetime | None
    attempt: int
    origin: str  # where the original record sat (dlq-source)
    trace_id: uuid.UUID | None = None
    project_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None
    platform_id: uuid.UUID | None = None  # explicit, or routed (storage stage)
    external_id: str | None = None
    received_at: dt.datetime | None = None


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def describe(record: Record) -> DlqEntry:
    headers = dlq.read_headers(record.headers)
    envelope: RawEnvelope | None
    try:
        envelope = decode_raw(record.value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        envelope = None
    platform = None
    if envelope is not None:
        platform = envelope.platform_id or _routed_platform(record.value)
    return DlqEntry(
        source=f"{record.topic}/{record.partition}/{record.offset}",
        key=record.key.decode("utf-8", "replace") if record.key is not None else None,
        reason=headers.get(dlq.REASON, "unknown"),
        stage=headers.get(dlq.STAGE, "unknown"),
        detail=headers.get(dlq.DETAIL, ""),
        candidates=[c for c in headers.get(dlq.CANDIDATES, "").split(",") if c],
        failed_at=_parse_time(headers.get(dlq.FAILED_AT)),
        attempt=dlq.attempt_of(record.headers),
        origin=headers.get(dlq.SOURCE, ""),
        trace_id=envelope.trace_id if envelope else None,
        project_id=envelope.project_id if envelope else None,
        key_id=envelope.key_id if envelope else None,
        platform_id=platform,
        external_id=envelope.external_id if envelope else None,
        received_at=envelope.received_at if envelope else None,
    )


class _Routed(msgspec.Struct):
    routed_platform_id: uuid.UUID | None = None


def _routed_platform(value: bytes) -> uuid.UUID | None:
    """The platform a storage-stage record was routed to (its value is a routed envelope)."""
    try:
        return msgspec.json.decode(value, type=_Routed).routed_platform_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def read(
    bootstrap: str, topic: str, *, follow: bool = False, idle_ms: int = 1000
) -> AsyncIterator[Record]:
    """Every record of ``topic`` from the beginning; with ``follow``, then new ones as they come.
    Without a consumer group: reading changes nothing for anybody."""
    consumer = reader(bootstrap)
    await consumer.start()
    try:
        # No subscription, so refresh the cluster metadata ourselves (aiokafka has no public call
        # that updates the consumer's own view; ``topics()`` returns a copy).
        await refresh_metadata(consumer)
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            raise SystemExit(f"topic {topic} does not exist")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while True:
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=1000)
            for records in batch.values():
                for record in records:
                    yield record
            if follow:
                continue
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= ends[tp] for tp in partitions):
                return
            if not batch:
                await asyncio.sleep(0)
    finally:
        await consumer.stop()
