"""The OTLP part of the Kafka contract: what an OpenTelemetry trace becomes on ``traces.raw``.

An OTLP export request (``POST /v1/traces``, or OTLP JSON on ``POST /public/traces``) may hold
spans of many traces; the ingest API turns it into one envelope per trace (per resource, see
``ingest_api.otlp_decode``), with:

- ``shape = "otlp"``;
- ``external_id = "otlp:<32 hex digits of the OTLP trace id>"``, so the message key is
  ``<project>:otlp:<hex>``: every part of one trace lands on one partition, in order, and the
  storage worker merges them into one row identified by (project, external id);
- ``body`` = :class:`TracePart` as JSON: the OTLP trace id, the resource's attributes and the
  spans converted to Mibo's canonical span fields.

Why a canonical body instead of forwarding the request bytes: one request is split per trace
(forwarding would copy every other trace's spans into each envelope), the protobuf encoding is
not JSON (the ``traces`` table stores JSON), and OTLP's wire form (typed ``AnyValue`` wrappers,
lists of key/value pairs, hex or base64 ids) is not what readers of a stored trace want: with
canonical spans an OTLP trace reads like one sent as ``{"spans": [...]}``, and spans can be merged
by ``span_id`` across exports.

A trace's identity is (project, platform, external id): OTLP trace ids travel in W3C
``traceparent`` headers, so they are not secrets, and spans sent under another platform's scope
must never merge into this platform's trace. The stored row's id is :func:`stored_trace_id`,
derived from that identity; each export (part) keeps its own UUIDv7 — how re-deliveries are
recognised, and the id the ingest API answers with — and ``trace_aliases`` maps it to the trace,
so ``GET /public/traces/{id}`` finds the merged trace whichever part the client was told about.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import msgspec

SHAPE: Final = "otlp"
EXTERNAL_ID_PREFIX: Final = "otlp:"
_NAMESPACE = uuid.UUID("5b0e7a52-3d2b-4c1e-9f4a-6f7469707470")  # fixed: ids must never change


def external_id(trace_id_hex: str) -> str:
    """The external id of an OTLP trace: ``otlp:`` + its 32 lowercase hex digits."""
    return EXTERNAL_ID_PREFIX + trace_id_hex


def is_otlp_external_id(value: str) -> bool:
    """External ids with the ``otlp:`` prefix are reserved for OTLP traces."""
    return value.startswith(EXTERNAL_ID_PREFIX)


def stored_trace_id(project_id: uuid.UUID, platform_id: uuid.UUID, otlp_external_id: str) -> uuid.UUID:
    """The ``traces.id`` of an OTLP trace: a UUIDv5 of its identity (project, platform, external
    id), the same for every part routed to that platform. The platform is the router's decision,
    so an export is answered with its own part id instead, which ``trace_aliases`` maps to the
    trace (migration 0005)."""
    return uuid.uuid5(_NAMESPACE, f"{project_id}/{platform_id}/{otlp_external_id}")


class CanonicalStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """OTLP's status: ``code`` 0 unset, 1 ok, 2 error (Mibo's codes are the same)."""

    code: int
    message: str | None = None


class SpanEvent(msgspec.Struct, frozen=True):
    name: str
    time_unix_nano: str | None
    attributes: dict[str, Any]


class SpanLink(msgspec.Struct, frozen=True, omit_defaults=True):
    trace_id: str
    span_id: str
    trace_state: str | None = None
    attributes: dict[str, Any] = {}


class Scope(msgspec.Struct, frozen=True, omit_defaults=True):
    """The instrumentation scope (library) that produced a span."""

    name: str
    version: str | None = None


class CanonicalSpan(msgspec.Struct, frozen=True, omit_defaults=True):
    """A span in Mibo's canonical fields (always present) plus OTLP's extras (only when set).

    Ids are lowercase hex (16 digits for span ids); times are decimal strings of Unix nanoseconds
    (``None`` when OTLP sent 0, i.e. unset); attribute values are plain JSON (OTLP's ``AnyValue``
    unwrapped: bytes as base64, 64-bit integers as numbers)."""

    span_id: str
    name: str
    parent_span_id: str | None
    start_time_unix_nano: str | None
    end_time_unix_nano: str | None
    attributes: dict[str, Any]
    status: CanonicalStatus | None
    events: list[SpanEvent]
    kind: int = 0  # OTLP SpanKind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    links: list[SpanLink] = []
    trace_state: str | None = None
    scope: Scope | None = None


class TracePart(msgspec.Struct, frozen=True):
    """One envelope's body: part of one OTLP trace, as sent by one resource."""

    traceId: str  # 32 lowercase hex digits (camelCase like the other top-level body fields)
    resource: dict[str, Any]  # the resource's attributes, e.g. {"service.name": "checkout"}
    spans: list[CanonicalSpan]


_encoder = msgspec.json.Encoder()


def encode_body(body: TracePart) -> bytes:
    return _encoder.encode(body)
