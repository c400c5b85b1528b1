"""Routed records → plain rows: the pure decoding step of the storage worker.

A ``traces.routed`` value becomes a ``TraceRow`` shaped like the ``traces`` table, paired with the
``Source`` it came from (needed only if the row is later dead-lettered). Anything that cannot become
a row — undecodable bytes, an unsupported envelope version, a body that is not a JSON object — is
returned as a ``DeadLetter`` (``invalid_envelope``) instead of raising: one bad record must never
block its partition.

JSON columns stay JSON text end to end (``msgspec.Raw`` slices, never parsed into Python objects):
PostgreSQL parses them once, into ``jsonb``, and is the judge of what it accepts.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
from aiokafka.structs import ConsumerRecord

from shared.dlq import DeadLetter
from shared.envelope import decode_routed

_NULL = msgspec.Raw(b"null")


class TraceRow(msgspec.Struct, frozen=True, kw_only=True):
    """One ``traces`` row. ``payload`` is the request body exactly as the client sent it;
    ``metadata`` and ``external_metadata`` are copied out of it so they can be queried alone."""

    id: uuid.UUID
    project_id: uuid.UUID
    platform_id: uuid.UUID
    api_key_id: uuid.UUID
    external_id: str | None
    body_shape: str
    payload: str
    metadata: str | None
    external_metadata: str | None
    received_at: dt.datetime


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """Where a record came from, and its original key, value and headers (for the DLQ)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class Pending(msgspec.Struct, frozen=True):
    """A decoded row on its way to the database."""

    row: TraceRow
    source: Source


class Invalid(msgspec.Struct, frozen=True):
    """A record that cannot become a row, and why."""

    source: Source
    dead: DeadLetter


class _BodyParts(msgspec.Struct):
    """The only parts of the body the storage worker reads; every other field is skipped."""

    metadata: msgspec.Raw = _NULL
    externalMetadata: msgspec.Raw = _NULL  # the wire name


_body_decoder = msgspec.json.Decoder(_BodyParts)


@dataclass(frozen=True, slots=True)
class Decoded:
    pending: list[Pending]
    invalid: list[Invalid]


def source_of(record: ConsumerRecord[bytes, bytes]) -> Source:
    return Source(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers or ()),
    )


def _json_or_none(raw: msgspec.Raw) -> str | None:
    text = bytes(raw).decode()
    return None if text == "null" else text


def _invalid(source: Source, detail: str) -> Invalid:
    return Invalid(source, DeadLetter("invalid_envelope", detail))


def decode_record(record: ConsumerRecord[bytes, bytes]) -> Pending | Invalid:
    source = source_of(record)
    if record.value is None:
        return _invalid(source, "The record has no value (a tombstone?)")
    try:
        envelope = decode_routed(record.value)
        body = bytes(envelope.body)
        parts = _body_decoder.decode(body)
        payload = body.decode()  # msgspec does not check UTF-8 inside a Raw value: this does
        metadata = _json_or_none(parts.metadata)
        external_metadata = _json_or_none(parts.externalMetadata)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _invalid(source, f"The record is not a valid traces.routed envelope: {exc}")
    except UnicodeDecodeError as exc:
        return _invalid(source, f"The trace body is not valid UTF-8: {exc}")
    if envelope.received_at.tzinfo is None:  # versions are ordered by it: it must be an instant
        return _invalid(source, "received_at has no time zone")
    row = TraceRow(
        id=envelope.trace_id,
        project_id=envelope.project_id,
        platform_id=envelope.routed_platform_id,
        api_key_id=envelope.key_id,
        external_id=envelope.external_id,
        body_shape=envelope.shape,
        payload=payload,
        metadata=metadata,
        external_metadata=external_metadata,
        received_at=envelope.received_at,
    )
    return Pending(row, source)


def decode_records(records: Iterable[ConsumerRecord[bytes, bytes]]) -> Decoded:
    pending: list[Pending] = []
    invalid: list[Invalid] = []
    for record in records:
        decoded = decode_record(record)
        if isinstance(decoded, Pending):
            pending.append(decoded)
        else:
            invalid.append(decoded)
    return Decoded(pending, invalid)
