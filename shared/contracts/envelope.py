"""The Kafka contract's message values (SPEC §4): versioned msgspec structs, encoded as JSON.

``RawEnvelope`` is what the ingest API writes to ``traces.raw``: who sent the trace (project, key
and the key's scope at ingest time), the explicit platform and metadata hints if any, and the
request body itself, byte for byte (``msgspec.Raw``: embedded without re-encoding).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

import msgspec

ENVELOPE_VERSION = 1

BodyShape = Literal["spans", "data", "otlp"]
"""``otlp``: one OpenTelemetry trace's spans from one export (see ``shared.contracts.otlp``); the storage worker
merges every part of a trace into one row."""


class Hints(msgspec.Struct, frozen=True, omit_defaults=True):
    """Routing hints (SPEC §5 step 3): ``workflow_id`` / ``chatflow_id`` from the body's
    ``metadata``; ``service_name`` from an OTLP resource's ``service.name``. Absent hints are left
    out of the JSON, so envelopes written before a hint existed decode unchanged."""

    workflow_id: str | None = None
    chatflow_id: str | None = None
    service_name: str | None = None


class RawEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    v: int = ENVELOPE_VERSION
    trace_id: uuid.UUID
    received_at: dt.datetime
    project_id: uuid.UUID
    key_id: uuid.UUID
    key_restricted: bool
    key_scope: list[uuid.UUID]
    external_id: str | None
    shape: BodyShape
    platform_id: uuid.UUID | None
    hints: Hints
    body: msgspec.Raw


ResolvedBy = Literal["explicit", "single_candidate", "hint"]


class RoutedEnvelope(RawEnvelope, frozen=True, kw_only=True):
    """What the router writes to ``traces.routed``: the raw envelope plus its decision."""

    routed_platform_id: uuid.UUID
    resolved_by: ResolvedBy
    routed_at: dt.datetime


def routed(raw: RawEnvelope, platform_id: uuid.UUID, resolved_by: ResolvedBy) -> RoutedEnvelope:
    fields = {name: getattr(raw, name) for name in raw.__struct_fields__}
    return RoutedEnvelope(
        **fields, routed_platform_id=platform_id, resolved_by=resolved_by, routed_at=dt.datetime.now(dt.UTC)
    )


_encoder = msgspec.json.Encoder()
_raw_decoder = msgspec.json.Decoder(RawEnvelope)
_routed_decoder = msgspec.json.Decoder(RoutedEnvelope)


def encode(envelope: msgspec.Struct) -> bytes:
    return _encoder.encode(envelope)


def decode_raw(value: bytes) -> RawEnvelope:
    """Decode a ``traces.raw`` value; raises ``msgspec.DecodeError``/``ValidationError`` on poison."""
    envelope = _raw_decoder.decode(value)
    if envelope.v != ENVELOPE_VERSION:
        raise msgspec.ValidationError(f"unsupported envelope version {envelope.v}")
    return envelope


def decode_routed(value: bytes) -> RoutedEnvelope:
    """Decode a ``traces.routed`` value; raises ``msgspec.DecodeError``/``ValidationError`` on poison."""
    envelope = _routed_decoder.decode(value)
    if envelope.v != ENVELOPE_VERSION:
        raise msgspec.ValidationError(f"unsupported envelope version {envelope.v}")
    return envelope


def message_key(project_id: uuid.UUID, external_id: str | None, trace_id: uuid.UUID) -> bytes:
    """``<project_id>:<external_id or trace id>``: versions of one trace share a partition."""
    return f"{project_id}:{external_id if external_id is not None else trace_id}".encode()
