"""Routed records → plain rows: the pure decoding step of the storage worker.

A ``traces.routed`` value becomes a ``TraceRow`` shaped like the ``traces`` table, paired with the
``Source`` it came from (needed only if the row is later dead-lettered). Anything that cannot become
a row — undecodable bytes, an unsupported envelope version, a body that is not a JSON object — is
returned as a ``DeadLetter`` (``invalid_envelope``) instead of raising: one bad record must never
block its partition.

JSON columns stay JSON text end to end (``msgspec.Raw`` slices, never parsed into Python objects):
PostgreSQL parses them once, into ``jsonb``, and is the judge of what it accepts.

An OTLP part (shape ``otlp``, see ``shared.contracts.otlp``) becomes a row whose ``spans`` hold its spans,
each with its version (the part's id and received-at) and the part's resource: they go to
``trace_spans``, merged span by span into the trace (``storage_worker.merge``). Its ``payload`` is
``{"traceId": ...}`` and its ``metadata`` the resource's attributes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from shared.contracts import otlp
from shared.contracts.dlq import DeadLetter
from shared.contracts.envelope import ENVELOPE_VERSION, BodyShape
from shared.runtime.kafka import Record

_NULL = msgspec.Raw(b"null")


class SpanVersion(msgspec.Struct, frozen=True):
    """One span of an OTLP part, as ``trace_spans`` stores it. ``(received_at, part_id)`` is its
    version: of two versions of a span the newer wins, wherever and whenever they meet."""

    span_id: str
    part_id: uuid.UUID  # the envelope's trace id (UUIDv7)
    received_at: dt.datetime
    span: str  # the canonical span (JSON text)
    resource: str  # the part's resource attributes (JSON text)

    @property
    def version(self) -> tuple[dt.datetime, uuid.UUID]:
        return (self.received_at, self.part_id)


class TraceRow(msgspec.Struct, frozen=True, kw_only=True):
    """One ``traces`` row. ``payload`` is the request body exactly as the client sent it;
    ``metadata`` and ``external_metadata`` are copied out of it so they can be queried alone.

    For an OTLP part ``id`` is the part's own (envelope) id — what re-deliveries are recognised
    by, and an alias of the trace (``trace_aliases``) — while the stored row's id is
    ``shared.contracts.otlp.stored_trace_id`` of its identity (see :func:`stored_id`);
    ``spans`` holds its spans (empty for every other shape)."""

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
    spans: tuple[SpanVersion, ...] = ()

    @property
    def is_otlp(self) -> bool:
        return self.body_shape == otlp.SHAPE


def stored_id(row: TraceRow) -> uuid.UUID:
    """The ``traces.id`` this row is written as: its own id, or an OTLP trace's derived one."""
    if row.is_otlp:
        assert row.external_id is not None
        return otlp.stored_trace_id(row.project_id, row.platform_id, row.external_id)
    return row.id


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """Where a record came from, and its original key, value and headers (for the DLQ)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class Pending(msgspec.Struct, frozen=True):
    """A decoded row on its way to the database.

    ``parts``: when several OTLP parts of one trace met in one batch, the write that merges them
    (``row``, ``source`` of the newest) lists every original part here, so each can be counted
    and, if PostgreSQL refuses the write, dead-lettered; empty otherwise."""

    row: TraceRow
    source: Source
    parts: tuple[Pending, ...] = ()

    @property
    def originals(self) -> tuple[Pending, ...]:
        """The records this write stands for."""
        return self.parts or (self,)


class Invalid(msgspec.Struct, frozen=True):
    """A record that cannot become a row, and why."""

    source: Source
    dead: DeadLetter


class _Routed(msgspec.Struct, frozen=True):
    """The fields of a ``traces.routed`` value (``shared.contracts.envelope.RoutedEnvelope``) that a
    row is made of; the others (the key's scope, hints, how it was routed) are skipped unparsed.
    Decoding a UUID or an instant makes a Python object: these are the only ones made per record."""

    trace_id: uuid.UUID
    received_at: dt.datetime
    project_id: uuid.UUID
    key_id: uuid.UUID
    external_id: str | None
    shape: BodyShape
    body: msgspec.Raw
    routed_platform_id: uuid.UUID
    v: int = ENVELOPE_VERSION


_routed_decoder = msgspec.json.Decoder(_Routed)


def _decode_routed(value: bytes) -> _Routed:
    envelope = _routed_decoder.decode(value)
    if envelope.v != ENVELOPE_VERSION:
        raise msgspec.ValidationError(f"unsupported envelope version {envelope.v}")
    return envelope


class _BodyParts(msgspec.Struct):
    """The only parts of the body the storage worker reads; every other field is skipped."""

    metadata: msgspec.Raw = _NULL
    externalMetadata: msgspec.Raw = _NULL  # the wire name


_body_decoder = msgspec.json.Decoder(_BodyParts)


class _OtlpBody(msgspec.Struct):
    """An OTLP part's body (``shared.contracts.otlp.TracePart``), spans kept as JSON text."""

    traceId: str
    resource: msgspec.Raw
    spans: list[msgspec.Raw]


class _SpanId(msgspec.Struct):
    span_id: str


_otlp_decoder = msgspec.json.Decoder(_OtlpBody)
_span_id_decoder = msgspec.json.Decoder(_SpanId)


@dataclass(frozen=True, slots=True)
class DecodedRecords:
    pending: list[Pending]
    invalid: list[Invalid]


def source_of(record: Record) -> Source:
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


def decode_record(record: Record) -> Pending | Invalid:
    source = source_of(record)
    if record.value is None:
        return _invalid(source, "The record has no value (a tombstone?)")
    try:
        envelope = _decode_routed(record.value)
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
    if envelope.shape == otlp.SHAPE:
        return _otlp_row(envelope, body, source)
    return Pending(_row(envelope, payload, metadata, external_metadata), source)


def _row(
    envelope: _Routed,
    payload: str,
    metadata: str | None,
    external_metadata: str | None,
    spans: tuple[SpanVersion, ...] = (),
) -> TraceRow:
    """The ``traces`` row of a routed envelope: identity and routing from the envelope."""
    return TraceRow(
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
        spans=spans,
    )


def _otlp_row(envelope: _Routed, body: bytes, source: Source) -> Pending | Invalid:
    try:
        parts = _otlp_decoder.decode(body)
        ids = [_span_id_decoder.decode(span).span_id for span in parts.spans]
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _invalid(source, f"The OTLP trace body is not valid: {exc}")
    if envelope.external_id != otlp.external_id(parts.traceId):
        return _invalid(
            source, f"An OTLP trace's external id must be otlp:<traceId>, not {envelope.external_id!r}"
        )
    if not ids or not all(ids):
        return _invalid(source, "An OTLP trace body needs spans, each with a span_id")
    resource = bytes(parts.resource).decode()
    spans: dict[str, SpanVersion] = {}
    for span_id, span in zip(ids, parts.spans, strict=True):  # a span id twice: the last one
        spans[span_id] = SpanVersion(
            span_id, envelope.trace_id, envelope.received_at, bytes(span).decode(), resource
        )
    payload = msgspec.json.encode({"traceId": parts.traceId}).decode()
    row = _row(envelope, payload, resource, None, spans=tuple(spans.values()))
    return Pending(row, source)


def decode_records(records: Iterable[Record]) -> DecodedRecords:
    pending: list[Pending] = []
    invalid: list[Invalid] = []
    for record in records:
        decoded = decode_record(record)
        if isinstance(decoded, Pending):
            pending.append(decoded)
        else:
            invalid.append(decoded)
    return DecodedRecords(pending, invalid)
