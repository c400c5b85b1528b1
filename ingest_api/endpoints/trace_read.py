"""``GET /public/traces/{id}``: a stored trace, for the key's own project (Mibo's clients list it).

Authenticated exactly like ``POST /public/traces`` (``x-api-key``, same 401s). The lookup is scoped
in SQL to the key's project — and, for a restricted key, to its platforms — so another project's
trace is indistinguishable from a missing one: 404 ``NOT_FOUND`` either way (no id probing). A
trace accepted a moment ago may still be on its way through Kafka: 404 until it is stored.

JSON columns are returned as PostgreSQL renders them (``jsonb::text``, embedded with
``msgspec.Raw``), never parsed into Python objects on the way out.

A trace sent with an ``x-request-id`` is one row per (platform, external id) holding its newest
version: its id is that version's (the id the last POST answered with), ``createdAt`` when the
external id was first stored, ``updatedAt`` when a newer version last replaced it. An older
version's id leads to the newer version (``trace_aliases``).

An OpenTelemetry trace (``bodyShape`` ``otlp``) is the union of its exports: its payload is
``{"traceId", "spans": [...]}`` with the spans assembled from ``trace_spans`` (each with the
``resource`` that sent it), ordered by start time; the id every export was answered with leads to
it, and its own id (``shared.contracts.otlp.stored_trace_id``) is the same for every export.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import psycopg
import psycopg_pool
import structlog
from aiohttp import web

from ingest_api.auth import API_KEY_HEADER, authenticate
from ingest_api.context import DB_POOL, KEY_REGISTRY
from ingest_api.enqueue import RETRY_AFTER_SECONDS
from ingest_api.responses import ApiError, Detail, success
from shared.registry import KeyInfo

log = structlog.get_logger(__name__)

DB_TIMEOUT_SECONDS = 5.0

SELECT_TRACE = """
SELECT t.id, t.platform_id, t.external_id, t.body_shape,
       CASE WHEN t.body_shape = 'otlp' THEN (
           t.payload || jsonb_build_object('spans', (
               SELECT coalesce(
                   jsonb_agg(s.span || jsonb_build_object('resource', s.resource)
                             ORDER BY (s.span ->> 'start_time_unix_nano')::numeric NULLS FIRST, s.span_id),
                   '[]'::jsonb)
               FROM trace_spans s WHERE s.trace_id = t.id))
       )::text ELSE t.payload::text END,
       t.metadata::text, t.external_metadata::text, t.received_at, t.stored_at, t.updated_at
FROM traces t
WHERE t.id = (
    SELECT id FROM traces WHERE id = %(id)s
    UNION ALL
    SELECT r.id FROM trace_aliases a
    JOIN traces r ON r.project_id = a.project_id AND r.platform_id = a.platform_id
                 AND r.external_id = a.external_id
    WHERE a.id = %(id)s
    LIMIT 1)
  AND t.project_id = %(project_id)s
  AND (NOT %(restricted)s OR t.platform_id = ANY(%(scope)s))
"""
# The id is a row's own, or an alias (trace_aliases, migration 0005): an earlier version of an
# x-request-id trace, or one export of an OpenTelemetry trace. Either leads to the trace as stored
# now; the scope filter applies to that trace's platform, so no alias crosses a key's scope.


def _trace_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            "Invalid trace id",
            [Detail("uuid_parsing", "Input should be a valid UUID", "id", "path")],
        ) from None


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(text: str | None) -> msgspec.Raw | None:
    return None if text is None else msgspec.Raw(text.encode())


def trace_data(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``traces`` row as the API shows it (camelCase, like the POST answer)."""
    trace_id, platform_id, external_id, shape, payload, metadata, external, received, stored, updated = row
    return {
        "id": str(trace_id),
        "platformId": str(platform_id),
        "externalId": external_id,
        "bodyShape": shape,
        "payload": _json(payload),
        "metadata": _json(metadata),
        "externalMetadata": _json(external),
        "receivedAt": _time(received),
        "createdAt": _time(stored),
        "updatedAt": _time(updated),
    }


async def query(
    pool: psycopg_pool.AsyncConnectionPool, sql: str, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """Rows of one read; 503 with ``Retry-After`` while the database is unreachable."""
    try:
        async with pool.connection(timeout=DB_TIMEOUT_SECONDS) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        log.warning("trace lookup failed: database unavailable", error=repr(exc))
        raise ApiError(
            503,
            "SERVICE_UNAVAILABLE",
            "The trace could not be read right now; retry later",
            [Detail("unavailable", "The database is not reachable", "", "server")],
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None


def scope_params(key: KeyInfo) -> dict[str, Any]:
    """The key's reach as query parameters: its project and, when restricted, its platforms."""
    return {"project_id": key.project_id, "restricted": key.restricted, "scope": sorted(key.platform_ids)}


async def get_trace(request: web.Request) -> web.Response:
    app = request.app
    key = await authenticate(app[KEY_REGISTRY], request.headers.get(API_KEY_HEADER))
    trace_id = _trace_id(request.match_info["id"])
    rows = await query(app[DB_POOL], SELECT_TRACE, {"id": trace_id, **scope_params(key)})
    if not rows:
        raise ApiError(
            404,
            "NOT_FOUND",
            "Trace not found",
            [
                Detail(
                    "not_found",
                    f"No stored trace {trace_id} for this API key (it may still be queued)",
                    "id",
                    "path",
                )
            ],
        )
    return success(trace_data(rows[0]), "Trace retrieved")
