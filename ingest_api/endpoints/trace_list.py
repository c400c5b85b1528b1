"""``GET /public/traces``: the key's stored traces, newest first, a page at a time (what Mibo's n8n
node lists with ``?platformId=``).

Scoped exactly like ``GET /public/traces/{id}``: the key's project, and for a restricted key its
platforms (a ``platformId`` outside them is 403, like sending to it). Each item is a summary
(no payload: read one trace for that). Pages are keyset pagination over (received-at, id),
newest first: ``limit`` (1-100, default 20) and the opaque ``cursor`` of the previous page's
``nextCursor`` — stable while new traces arrive, and one index range scan per page
(``ix_traces_project_platform_received``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from typing import Any

import msgspec
from aiohttp import web

from ingest_api.auth import API_KEY_HEADER, authenticate, check_scope
from ingest_api.context import DB_POOL, KEY_REGISTRY
from ingest_api.endpoints.trace_read import query, scope_params
from ingest_api.responses import ApiError, Detail, success
from shared.contracts.times import iso_utc
from shared.registry import KeyInfo

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

SELECT_PAGE = """
SELECT t.id, t.platform_id, t.external_id, t.body_shape, t.received_at, t.stored_at, t.updated_at
FROM traces t
WHERE t.project_id = %(project_id)s
  AND (NOT %(restricted)s OR t.platform_id = ANY(%(scope)s))
  AND (%(platform_id)s::uuid IS NULL OR t.platform_id = %(platform_id)s)
  AND (%(after_at)s::timestamptz IS NULL OR (t.received_at, t.id) < (%(after_at)s, %(after_id)s::uuid))
ORDER BY t.received_at DESC, t.id DESC
LIMIT %(limit)s
"""


class Cursor(msgspec.Struct, array_like=True, frozen=True):
    """Where the previous page ended: its last trace's received-at and id."""

    received_at: dt.datetime
    id: uuid.UUID


class ListQuery(msgspec.Struct, frozen=True):
    platform_id: uuid.UUID | None
    limit: int
    after: Cursor | None


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cursor = msgspec.json.decode(raw, type=Cursor)
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise _invalid("cursor", "cursor is not one this API handed out (use nextCursor as given)") from None
    if cursor.received_at.tzinfo is None:
        raise _invalid("cursor", "cursor is not one this API handed out (use nextCursor as given)")
    return cursor


def _invalid(name: str, msg: str) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", f"Invalid {name}", [Detail("value_error", msg, name, "query")])


def parse_query(params: Any) -> ListQuery:
    """``platformId``, ``limit`` and ``cursor`` from the query string, or a 400 naming the one wrong."""
    platform_id = None
    if (text := params.get("platformId")) is not None:
        try:
            platform_id = uuid.UUID(text)
        except ValueError:
            raise _invalid("platformId", "platformId must be a UUID") from None
    limit = DEFAULT_LIMIT
    if (text := params.get("limit")) is not None:
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise _invalid("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(text)
    after = decode_cursor(params["cursor"]) if params.get("cursor") else None
    return ListQuery(platform_id, limit, after)


def summary(row: tuple[Any, ...]) -> dict[str, Any]:
    trace_id, platform_id, external_id, shape, received, stored, updated = row
    return {
        "id": str(trace_id),
        "platformId": str(platform_id),
        "externalId": external_id,
        "bodyShape": shape,
        "receivedAt": iso_utc(received),
        "createdAt": iso_utc(stored),
        "updatedAt": iso_utc(updated),
    }


def page(rows: list[tuple[Any, ...]], limit: int) -> dict[str, Any]:
    """One page from ``limit + 1`` rows: the extra row only says whether there is a next page."""
    shown = rows[:limit]
    more = len(rows) > limit
    last = shown[-1] if shown else None
    return {
        "traces": [summary(row) for row in shown],
        "nextCursor": encode_cursor(Cursor(last[4], last[0])) if more and last is not None else None,
    }


def _params(key: KeyInfo, wanted: ListQuery) -> dict[str, Any]:
    return {
        **scope_params(key),
        "platform_id": wanted.platform_id,
        "after_at": wanted.after.received_at if wanted.after else None,
        "after_id": wanted.after.id if wanted.after else None,
        "limit": wanted.limit + 1,
    }


async def list_traces(request: web.Request) -> web.Response:
    app = request.app
    key = await authenticate(app[KEY_REGISTRY], request.headers.get(API_KEY_HEADER))
    wanted = parse_query(request.query)
    check_scope(key, wanted.platform_id)
    rows = await query(app[DB_POOL], SELECT_PAGE, _params(key, wanted))
    return success(page(rows, wanted.limit), "Traces retrieved")
