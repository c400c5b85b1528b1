"""``POST /public/traces/batch``: many traces per request, one result per item (207).

Each item is validated on its own, exactly like a single trace (the same ``parse_body`` on the
item's own bytes, which travel unchanged as that trace's body); valid items are enqueued together
and the answer is sent once every one of them was acknowledged by Kafka — or reported as failed.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ingest_api.auth import API_KEY_HEADER, authenticate, check_scope, known_platform
from ingest_api.body import BodyInvalid, parse_body
from ingest_api.content import read_body
from ingest_api.context import ENQUEUER, KEY_REGISTRY, METRICS, SETTINGS
from ingest_api.endpoints.traces import EXTERNAL_ID_RULE, valid_external_id
from ingest_api.enqueue import unavailable
from ingest_api.envelopes import build_envelope
from ingest_api.responses import ApiError, Detail, json_response, now_iso
from shared.contracts import otlp
from shared.contracts.envelope import encode, message_key


class BatchBody(msgspec.Struct):
    traces: list[msgspec.Raw]


class ItemId(msgspec.Struct):
    externalId: str | None = None  # wire name, camelCase


_batch = msgspec.json.Decoder(BatchBody)
_item_id = msgspec.json.Decoder(ItemId)


def _rejected(index: int, code: str, message: str, details: list[Detail]) -> dict[str, Any]:
    prefixed = [
        msgspec.structs.replace(d, path=f"traces[{index}]" + (f".{d.path}" if d.path else ""))
        for d in details
    ]
    return {
        "index": index,
        "status": "rejected",
        "error": {"code": code, "message": message, "details": prefixed},
    }


def _external_id(raw: bytes) -> str | None:
    try:
        value = _item_id.decode(raw).externalId
    except msgspec.ValidationError:
        raise BodyInvalid(
            "externalId must be a string", [Detail("type_error", EXTERNAL_ID_RULE, "externalId")]
        ) from None
    if value is not None and not valid_external_id(value):
        raise BodyInvalid("Invalid externalId", [Detail("value_error", EXTERNAL_ID_RULE, "externalId")])
    return value


async def post_batch(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    key = await authenticate(app[KEY_REGISTRY], request.headers.get(API_KEY_HEADER))
    body = await read_body(request, settings.max_body_bytes)
    try:
        batch = _batch.decode(body)
    except msgspec.MsgspecError as exc:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            'Body must be {"traces": [...]}',
            [Detail("value_error", str(exc), "traces")],
        ) from None
    if not batch.traces or len(batch.traces) > settings.batch_max_traces:
        message = f"traces must hold 1 to {settings.batch_max_traces} items"
        raise ApiError(400, "VALIDATION_ERROR", message, [Detail("value_error", message, "traces")])

    results: list[dict[str, Any]] = [{} for _ in batch.traces]
    pending: list[tuple[int, bytes, bytes, dict[str, Any]]] = []
    sizes: dict[int, int] = {}
    for index, raw in enumerate(batch.traces):
        item = bytes(raw)
        try:
            external_id = _external_id(item)
            parsed = parse_body(item)
            if parsed.shape == otlp.SHAPE:
                message = "OTLP requests (resourceSpans) are not batch items: send them to /v1/traces"
                raise BodyInvalid(message, [Detail("value_error", message, "resourceSpans")])
            check_scope(key, parsed.platform_id)
        except BodyInvalid as exc:
            results[index] = _rejected(index, "VALIDATION_ERROR", exc.message, exc.details)
            continue
        except ApiError as err:
            results[index] = _rejected(index, err.code, err.message, err.details)
            continue
        envelope = build_envelope(key, parsed, item, external_id)
        platform = known_platform(key, parsed.platform_id)
        queued = {
            "index": index,
            "status": "queued",
            "id": str(envelope.trace_id),
            "externalId": external_id,
            "platformId": str(platform) if platform else None,
        }
        sizes[index] = len(item)
        pending.append(
            (index, message_key(key.project_id, external_id, envelope.trace_id), encode(envelope), queued)
        )

    outcomes = await app[ENQUEUER].send_many([(k, v) for _, k, v, _ in pending])
    accepted = 0
    for (index, _, _, queued), failure in zip(pending, outcomes, strict=True):
        if failure is None:
            results[index] = queued
            accepted += 1
            app[METRICS].accepted_bytes.inc(sizes[index])
        else:
            error = unavailable(failure)
            results[index] = {
                **_rejected(index, error.code, error.message, error.details),
                "status": "failed",
            }
    app[METRICS].accepted.inc(accepted)
    if pending and accepted == 0 and all(o is not None for o in outcomes):
        raise unavailable("Kafka could not take any trace of the batch")
    rejected = len(results) - accepted
    return json_response(
        {
            "success": rejected == 0,
            "message": f"{accepted} trace(s) queued, {rejected} not",
            "timestamp": now_iso(),
            "data": {"accepted": accepted, "rejected": rejected, "results": results},
        },
        status=207,
    )
