"""``POST /public/traces/batch``: many traces per request, one result per item (207).

Each item is validated on its own, exactly like a single trace (the same decoding and
``validate`` as ``parse_body``, on the item's own bytes, which travel unchanged as that trace's
body; its ``externalId`` decoded in the same pass); valid items are enqueued together
and the answer is sent once every one of them was acknowledged by Kafka — or reported as failed.

The request as a whole is checked once (``check_json``: UTF-8, nesting depth — an item may nest as
deep as a single trace may, the batch adds two levels), then split into items. An item that is not
a valid trace is reported in its own result; a request none of whose items is valid is still a 207
that says why for each of them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from ingest_api.auth import API_KEY_HEADER, authenticate, check_scope, known_platform
from ingest_api.body import MAX_JSON_DEPTH, BodyInvalid, TraceBody, check_json, decode_body, validate
from ingest_api.content import read_body
from ingest_api.context import ENQUEUER, KEY_REGISTRY, METRICS, SETTINGS
from ingest_api.endpoints.traces import EXTERNAL_ID_MAX, EXTERNAL_ID_RULE, valid_external_id
from ingest_api.enqueue import unavailable
from ingest_api.envelopes import build_envelope
from ingest_api.responses import ApiError, Detail, ErrorInfo, Timestamp, json_response, now_iso
from shared.contracts import otlp
from shared.contracts.envelope import encode, message_key

BATCH_NESTING = 2  # {"traces": [ ... ]} around every item
_ITEM_TOO_DEEP = f"A batch item must not nest arrays and objects more than {MAX_JSON_DEPTH} levels deep"
ExternalId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=EXTERNAL_ID_MAX,
        pattern=r"^(?!otlp:)[\x20-\x7e]+$",
        description=EXTERNAL_ID_RULE,
    ),
]


class BatchItem(TraceBody):
    """One trace of a batch: a trace body (canonical or legacy; OTLP requests go to /v1/traces)
    with its own optional external id (the batch's x-request-id, per item)."""

    externalId: ExternalId | None = None


# A batch item is any JSON value: one that is not a valid BatchItem is rejected in its own result
# (207), not refused with the request; the schema says so.
BatchItemSchema = Annotated[
    Any,
    Meta(
        extra_json_schema={
            "anyOf": [
                {
                    "allOf": [{"$ref": "#/components/schemas/BatchItem"}],
                    "oneOf": [{"required": ["spans"]}, {"required": ["data"]}],
                    "not": {"required": ["resourceSpans"]},
                },
                {"description": "Anything else: rejected on its own, with the reason in its result"},
            ]
        }
    ),
]


class BatchRequest(msgspec.Struct):
    """``traces``: 1 to BATCH_MAX_TRACES (default 1000) items."""

    traces: Annotated[list[BatchItemSchema], Meta(min_length=1)]


class BatchBody(msgspec.Struct):
    traces: list[msgspec.Raw]


class BatchResult(msgspec.Struct, omit_defaults=True):
    """One item's outcome: ``queued`` (with its trace id), ``rejected`` (invalid, or out of the
    key's scope: ``error`` says why) or ``failed`` (Kafka did not take it: retry that item)."""

    index: int
    status: Literal["queued", "rejected", "failed"]
    id: str | UnsetType = UNSET
    externalId: str | UnsetType | None = UNSET
    platformId: str | UnsetType | None = UNSET
    error: ErrorInfo | UnsetType = UNSET


class BatchOutcome(msgspec.Struct):
    accepted: int
    rejected: int
    results: list[BatchResult]


class BatchAnswer(msgspec.Struct):
    """207: one result per item, in order; ``success`` is true when every item was queued."""

    success: bool
    message: str
    timestamp: Timestamp
    data: BatchOutcome


_batch = msgspec.json.Decoder(BatchBody)


def _rejected(
    index: int, code: str, message: str, details: list[Detail], status: Literal["rejected", "failed"]
) -> BatchResult:
    prefixed = [
        msgspec.structs.replace(d, path=f"traces[{index}]" + (f".{d.path}" if d.path else ""))
        for d in details
    ]
    return BatchResult(index, status, error=ErrorInfo(code, message, prefixed))


class _Item(TraceBody):
    """A batch item as decoded: its trace body and its external id in one pass (the id's type and
    rule are checked by ``_external_id``, with the same words as ``x-request-id``'s)."""

    externalId: Any = None


_item = msgspec.json.Decoder(_Item)


def _external_id(value: Any) -> str | None:
    """The item's ``externalId``: the same rule as ``x-request-id`` (printable ASCII only — a
    trailing newline too is refused)."""
    if value is not None and not isinstance(value, str):
        raise BodyInvalid(
            "externalId must be a string", [Detail("type_error", EXTERNAL_ID_RULE, "externalId")]
        )
    if value is not None and not (valid_external_id(value) and value.isascii() and value.isprintable()):
        raise BodyInvalid("Invalid externalId", [Detail("value_error", EXTERNAL_ID_RULE, "externalId")])
    return value


def _decode_batch(body: bytes) -> BatchBody:
    try:
        check_json(body, MAX_JSON_DEPTH + BATCH_NESTING)
        return _batch.decode(body)
    except BodyInvalid as exc:
        details = exc.details
        if details[0].type == "too_deep":  # said per item: the limit a single trace has
            details = [Detail("too_deep", _ITEM_TOO_DEEP, "traces")]
        raise ApiError(400, "VALIDATION_ERROR", exc.message, details) from None
    except RecursionError:  # not reachable after check_json; a backstop, never a 500
        detail = Detail("too_deep", _ITEM_TOO_DEEP, "traces")
        raise ApiError(400, "VALIDATION_ERROR", "Body is nested too deeply", [detail]) from None
    except msgspec.MsgspecError as exc:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            'Body must be {"traces": [...]}',
            [Detail("value_error", str(exc), "traces")],
        ) from None


async def post_batch(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    key = await authenticate(app[KEY_REGISTRY], request.headers.get(API_KEY_HEADER))
    batch = _decode_batch(await read_body(request, settings.max_body_bytes))
    if not batch.traces or len(batch.traces) > settings.batch_max_traces:
        message = f"traces must hold 1 to {settings.batch_max_traces} items"
        raise ApiError(400, "VALIDATION_ERROR", message, [Detail("value_error", message, "traces")])

    results: list[BatchResult] = [BatchResult(index, "rejected") for index in range(len(batch.traces))]
    pending: list[tuple[int, bytes, bytes, BatchResult]] = []
    sizes: dict[int, int] = {}
    for index, raw in enumerate(batch.traces):
        item = bytes(raw)
        try:
            decoded = decode_body(item, _item, checked=True)  # the whole body passed check_json
            parsed = validate(decoded)
            external_id = _external_id(decoded.externalId)
            if parsed.shape == otlp.SHAPE:
                message = "OTLP requests (resourceSpans) are not batch items: send them to /v1/traces"
                raise BodyInvalid(message, [Detail("value_error", message, "resourceSpans")])
            check_scope(key, parsed.platform_id)
        except BodyInvalid as exc:
            results[index] = _rejected(index, "VALIDATION_ERROR", exc.message, exc.details, "rejected")
            continue
        except ApiError as err:
            results[index] = _rejected(index, err.code, err.message, err.details, "rejected")
            continue
        envelope = build_envelope(key, parsed, item, external_id)
        platform = known_platform(key, parsed.platform_id)
        queued = BatchResult(
            index,
            "queued",
            id=str(envelope.trace_id),
            externalId=external_id,
            platformId=str(platform) if platform else None,
        )
        sizes[index] = len(item)
        pending.append(
            (index, message_key(key.project_id, external_id, envelope.trace_id), encode(envelope), queued)
        )

    # Nothing valid: nothing to produce (and no wait on an empty set of acknowledgements).
    outcomes = await app[ENQUEUER].send_many([(k, v) for _, k, v, _ in pending]) if pending else []
    accepted = accepted_bytes = 0
    for (index, _, _, queued), failure in zip(pending, outcomes, strict=True):
        if failure is None:
            results[index] = queued
            accepted += 1
            accepted_bytes += sizes[index]
        else:
            error = unavailable(failure)
            results[index] = _rejected(index, error.code, error.message, error.details, "failed")
    app[METRICS].accepted.inc(accepted)
    app[METRICS].accepted_bytes.inc(accepted_bytes)
    if pending and accepted == 0:
        raise unavailable("Kafka could not take any trace of the batch")
    rejected = len(results) - accepted
    answer = BatchAnswer(
        success=rejected == 0,
        message=f"{accepted} trace(s) queued, {rejected} not",
        timestamp=now_iso(),
        data=BatchOutcome(accepted, rejected, results),
    )
    return json_response(answer, status=207)
