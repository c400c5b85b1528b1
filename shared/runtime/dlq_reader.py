"""Reading the dead-letter topic: each record described from its headers and the envelope it
carries (pure ``describe``), as a row of the dead-letter index (pure ``index_row``, what the
storage worker writes to ``dlq_index``), and a reader over every partition (``read``)."""

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


def _record_time(record: Record) -> dt.datetime | None:
    """When Kafka says the record was written (milliseconds since the epoch), if it says."""
    stamp = record.timestamp
    if not isinstance(stamp, int) or stamp < 0:
        return None
    return dt.datetime.fromtimestamp(stamp / 1000, dt.UTC)


def describe(record: Record) -> DlqEntry:
    """What a DLQ record says: its ``dlq-*`` headers (``failed_at`` falls back to the record's own
    timestamp when ``dlq-failed-at`` is missing or unreadable) and the envelope it carries."""
    headers = dlq.read_headers(record.headers)
    envelope: RawEnvelope | None = None
    value: bytes | None = record.value  # None: a record without a value, dead-lettered as invalid_envelope
    if value is not None:
        try:
            envelope = decode_raw(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            envelope = None
    platform = None
    if envelope is not None and value is not None:
        platform = envelope.platform_id or _routed_platform(value)
    return DlqEntry(
        source=f"{record.topic}/{record.partition}/{record.offset}",
        key=record.key.decode("utf-8", "replace") if record.key is not None else None,
        reason=headers.get(dlq.REASON, "unknown"),
        stage=headers.get(dlq.STAGE, "unknown"),
        detail=headers.get(dlq.DETAIL, ""),
        candidates=[c for c in headers.get(dlq.CANDIDATES, "").split(",") if c],
        failed_at=_parse_time(headers.get(dlq.FAILED_AT)) or _record_time(record),
        attempt=dlq.attempt_of(record.headers),
        origin=headers.get(dlq.SOURCE, ""),
        trace_id=envelope.trace_id if envelope else None,
        project_id=envelope.project_id if envelope else None,
        key_id=envelope.key_id if envelope else None,
        platform_id=platform,
        external_id=envelope.external_id if envelope else None,
        received_at=envelope.received_at if envelope else None,
    )


class IndexRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``dlq_index`` (shared.db.schema): a DLQ record by its position, with what
    receipts and stats need. ``resolved_at`` is never part of it: the database sets it."""

    topic: str
    partition: int
    offset: int
    trace_id: uuid.UUID | None
    project_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    platform_id: uuid.UUID | None
    external_id: str | None
    received_at: dt.datetime | None
    reason: str
    stage: str
    detail: str
    candidates: list[str]
    origin: str
    failed_at: dt.datetime | None
    attempt: int

    def values(self) -> tuple[object, ...]:
        """The column values, in ``INDEX_COLUMNS`` order."""
        return tuple(getattr(self, name) for name in INDEX_COLUMNS)


INDEX_COLUMNS = IndexRow.__struct_fields__


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: a header that carries one is indexed with U+FFFD instead."""
    return value.replace("\x00", "\ufffd")


def index_row(record: Record) -> IndexRow:
    """A DLQ record as a ``dlq_index`` row: :func:`describe`, keyed by the record's position."""
    entry = describe(record)
    return IndexRow(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        trace_id=entry.trace_id,
        project_id=entry.project_id,
        api_key_id=entry.key_id,
        platform_id=entry.platform_id,
        external_id=None if entry.external_id is None else _text(entry.external_id),
        received_at=entry.received_at,
        reason=_text(entry.reason),
        stage=_text(entry.stage),
        detail=_text(entry.detail),
        candidates=[_text(c) for c in entry.candidates],
        origin=_text(entry.origin),
        failed_at=entry.failed_at,
        attempt=entry.attempt,
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
