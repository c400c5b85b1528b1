"""``POST /public/traces``: authenticate → read → decode → validate → check scope → enqueue → 202.

Each step is a function of its own module; this handler only reads top to bottom. An OTLP body
(``application/x-protobuf``, or JSON with ``resourceSpans``) takes the OTLP path
(``ingest_api.endpoints.otlp``): split per trace, answered in Mibo's envelope; ``x-request-id`` does
not apply to it (an OTLP trace's external id is ``otlp:<trace id>``).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

import msgspec
from aiohttp import web

from ingest_api.auth import API_KEY_HEADER, authenticate, check_scope, known_platform
from ingest_api.body import BodyInvalid, parse_body
from ingest_api.content import is_protobuf, read_body
from ingest_api.context import ENQUEUER, KEY_REGISTRY, METRICS, SETTINGS
from ingest_api.endpoints.otlp import accept_on_public
from ingest_api.envelopes import build_envelope
from ingest_api.responses import ApiError, Detail
from shared.contracts import otlp
from shared.contracts.envelope import encode, message_key
from shared.contracts.times import iso_utc

_json = msgspec.json.Encoder()
EXTERNAL_ID_MAX = 255
_EXTERNAL_ID = re.compile(r"^[\x20-\x7e]+$")
EXTERNAL_ID_RULE = (
    f"An external id is 1-{EXTERNAL_ID_MAX} printable ASCII characters, not starting with "
    f"{otlp.EXTERNAL_ID_PREFIX!r} (reserved for OpenTelemetry traces)"
)


def valid_external_id(value: str) -> bool:
    """Printable ASCII within the limit; ``otlp:...`` is the external id of OTLP traces (merged
    span by span, see shared.contracts.otlp), so a client may not pick one."""
    return (
        len(value) <= EXTERNAL_ID_MAX
        and _EXTERNAL_ID.match(value) is not None
        and not otlp.is_otlp_external_id(value)
    )


def external_id_from(value: str | None) -> str | None:
    """``x-request-id``: the trace's external id — printable ASCII, at most 255 characters."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not valid_external_id(value):
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            "Invalid x-request-id",
            [Detail("value_error", EXTERNAL_ID_RULE, "x-request-id", "header")],
        )
    return value


async def post_trace(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    key = await authenticate(app[KEY_REGISTRY], request.headers.get(API_KEY_HEADER))
    external_id = external_id_from(request.headers.get("x-request-id"))
    body = await read_body(request, settings.max_body_bytes, protobuf=True)
    if is_protobuf(request.headers.get("Content-Type", "")):
        return await accept_on_public(request, key, body, "protobuf")
    try:
        parsed = parse_body(body)
    except BodyInvalid as exc:
        raise ApiError(400, "VALIDATION_ERROR", exc.message, exc.details) from None
    if parsed.shape == otlp.SHAPE:
        return await accept_on_public(request, key, body, "json")
    check_scope(key, parsed.platform_id)
    envelope = build_envelope(key, parsed, body, external_id)
    await app[ENQUEUER].send(message_key(key.project_id, external_id, envelope.trace_id), encode(envelope))
    metrics = app[METRICS]
    metrics.accepted.inc()
    metrics.accepted_bytes.inc(len(body))
    return accepted(
        str(envelope.trace_id), external_id, known_platform(key, parsed.platform_id), envelope.received_at
    )


_ACCEPTED = (
    b'{"success":true,"message":"Trace accepted","timestamp":"%s","data":{"id":"%s","externalId":%s,'
    b'"platformId":%s,"status":"queued","createdAt":"%s"}}'
)


def accepted(
    trace_id: str, external_id: str | None, platform: uuid.UUID | None, received_at: dt.datetime
) -> web.Response:
    """The 202 of one queued trace, written from prepared bytes (the same JSON ``success()`` makes:
    Mibo's envelope, ``timestamp`` and ``createdAt`` the instant it was received)."""
    moment = iso_utc(received_at).encode()
    body = _ACCEPTED % (
        moment,
        trace_id.encode(),
        _json.encode(external_id),
        b'"%s"' % str(platform).encode() if platform else b"null",
        moment,
    )
    return web.Response(body=body, status=202, content_type="application/json")
