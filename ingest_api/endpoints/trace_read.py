"""``GET /public/traces/{id}``: the receipt of an accepted trace — stored, dead-lettered, or not
known (yet) — for the key's own project.

Authenticated exactly like ``POST /public/traces`` (``x-api-key``, same 401s). Every lookup is
scoped in SQL to the key's project — and, for a restricted key, to its platforms — so another
project's trace is indistinguishable from one never sent: 404 ``NOT_FOUND`` either way (no id
probing).

**The three answers.**

- ``200`` with ``data.status: "stored"``: the stored trace, exactly as before (``data.id``,
  ``payload``, ...) plus ``status``.
- ``200`` with ``data.status: "dead_lettered"``: ``{id, status, externalId, platformId,
  receivedAt, deadLetter: {reason, stage, detail, candidates, failedAt, attempt}}`` — the router
  (or the storage worker) could not place it; an operator can fix the configuration and replay it,
  after which the receipt says ``stored``. Read from the dead-letter index (``dlq_index``, kept by
  the storage worker from ``traces.dlq``), the newest dead-lettering of the id.
- ``404 NOT_FOUND``: neither stored nor dead-lettered — still on its way through Kafka, never
  accepted, or not this key's to see.

**Why a 200 for a dead-lettered trace, not a 404 with a status.** The service knows what became
of the trace, and that is what this resource answers: the lookup succeeded. Clients keep working:
Mibo's clients read ``data.id`` from a 200 (present in both shapes; Mibo's own ``data`` carries a
``status`` too), and a client that only ever polled for a 200 now stops on a dead letter instead
of polling forever — ``data.status`` says which (a dead-lettered answer has no ``payload``). A
404 with a different body would have made "not found" mean two things, broken the rule that every
4xx is the one error envelope (``ErrorBody``, which generic clients and the OpenAPI document rely
on), and made n8n's HTTP node fail the step it should branch on. And the 404 stays exactly what it
was, so "unknown" remains indistinguishable from "not yours".

**Scope of a dead letter.** As for stored traces, its project must be the key's, and for a
restricted key its platform (explicit, or the one it was routed to) must be in the key's scope. A
dead letter with no platform at all (ambiguous, unresolved) is shown to a restricted key only if
that key sent it — its candidates were the key's own platforms. A restricted key never reads what
lies outside its scope: candidates are cut to its platforms, and the detail of a
``platform_not_allowed`` letter (which names the platforms the hints matched outside the scope)
is replaced by a sentence that names none.

**Consistency.** A stored trace wins over its dead letters; when the newest dead letter is already
resolved (the trace was stored between the two reads, or on a platform outside the key's scope),
the stored trace is read again, so the receipt never goes from "dead-lettered" back to "not found"
while a replay lands.

JSON columns are returned as PostgreSQL renders them (``jsonb::text``, embedded with
``msgspec.Raw``), never parsed into Python objects on the way out. Answers over
``GZIP_MIN_BYTES`` are gzip-compressed when the request's ``Accept-Encoding`` allows gzip (a
6 MiB payload is a few hundred KiB on the wire), in aiohttp's executor for large bodies; every 200
says ``Vary: Accept-Encoding``.

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
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import msgspec
import psycopg
import psycopg_pool
import structlog
from aiohttp import web
from msgspec import Meta

from ingest_api.auth import API_KEY_HEADER, authenticate
from ingest_api.context import DB_POOL, KEY_REGISTRY, SETTINGS
from ingest_api.enqueue import RETRY_AFTER_SECONDS
from ingest_api.responses import ApiError, Detail, Timestamp, success
from shared.contracts.times import iso_utc
from shared.db import retention
from shared.registry import KeyInfo

log = structlog.get_logger(__name__)

DB_TIMEOUT_SECONDS = 5.0
GZIP_MIN_BYTES = 1024  # smaller answers gain too little to be worth a compressor

# The trace an id leads to: a row's own id, or an alias (trace_aliases, migration 0005): an earlier
# version of an x-request-id trace, or one export of an OpenTelemetry trace. Either leads to the
# trace as stored now; the scope filter applies to that trace's platform, so no alias crosses a
# key's scope.
FIND_TRACE = """
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

SELECT_TRACE = (
    """
SELECT t.id, t.platform_id, t.external_id, t.body_shape,
       CASE WHEN t.body_shape = 'otlp' THEN (
           t.payload || jsonb_build_object('spans', (
               SELECT coalesce(
                   jsonb_agg(s.span || jsonb_build_object('resource', s.resource)
                             ORDER BY (s.span ->> 'start_time_unix_nano')::numeric NULLS FIRST, s.span_id),
                   '[]'::jsonb)
               FROM trace_spans s WHERE s.trace_id = t.id))
       )::text ELSE t.payload::text END,
       t.metadata::text, t.external_metadata::text, t.received_at, t.stored_at, t.updated_at"""
    + FIND_TRACE
)

SELECT_LETTER = """
SELECT d.trace_id, d.platform_id, d.external_id, d.received_at, d.reason, d.stage, d.detail,
       d.candidates, d.failed_at, d.attempt, d.resolved_at
FROM dlq_index d
WHERE d.trace_id = %(id)s
  AND d.project_id = %(project_id)s
  AND (NOT %(restricted)s OR d.platform_id = ANY(%(scope)s)
       OR (d.platform_id IS NULL AND d.api_key_id = %(key_id)s))
ORDER BY d.attempt DESC, d.failed_at DESC NULLS LAST, d."offset" DESC
LIMIT 1
"""
# The newest dead-lettering of the id (a replayed trace dead-lettered again has several), within
# the reader's scope: see the module docstring. ix_dlq_index_trace_id finds them.

NOT_ALLOWED_FOR_RESTRICTED = (
    "The trace names a platform outside this API key's scope (by platformId, or by routing hints "
    "that match only platforms the key may not send to). Send it with a key that may use that "
    "platform, or ask the project's operator to widen this key's scope and replay the trace."
)


# --------------------------------------------------------------------------------------------------
# Answers


class DeadLetterInfo(msgspec.Struct, kw_only=True):
    """Why and when the trace was dead-lettered (its newest dead-lettering)."""

    reason: Annotated[
        str,
        Meta(
            description="platform_not_found, platform_not_allowed, platform_unresolved, platform_ambiguous, "
            "invalid_envelope or storage_rejected"
        ),
    ]
    stage: Annotated[str, Meta(description="router or storage")]
    detail: Annotated[str, Meta(description="A sentence for people: which key, hints and candidates")]
    candidates: Annotated[list[str], Meta(description="Platform ids the trace could go to (when ambiguous)")]
    failedAt: Timestamp | None
    attempt: Annotated[int, Meta(ge=1, description="1, plus one per replay that was dead-lettered again")]


class DeadLetteredTrace(msgspec.Struct, kw_only=True, tag_field="status", tag="dead_lettered"):
    """Accepted, then dead-lettered: not stored. An operator can fix the configuration and replay it
    (``mibo-ingest dlq replay``); the receipt then says ``stored``."""

    id: uuid.UUID
    externalId: str | None
    platformId: Annotated[uuid.UUID | None, Meta(description="Explicit or routed; null when none was found")]
    receivedAt: Timestamp | None
    deadLetter: DeadLetterInfo


class LetterRow(NamedTuple):
    """One ``dlq_index`` row as :data:`SELECT_LETTER` reads it."""

    trace_id: uuid.UUID
    platform_id: uuid.UUID | None
    external_id: str | None
    received_at: dt.datetime | None
    reason: str
    stage: str
    detail: str
    candidates: list[str]
    failed_at: dt.datetime | None
    attempt: int
    resolved_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Stored:
    row: tuple[Any, ...]  # the stored-trace query's row


Receipt = Stored | LetterRow | None
"""What a lookup found: the stored trace, its newest (unresolved) dead letter, or nothing."""


def _maybe_time(value: dt.datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


def _json(text: str | None) -> msgspec.Raw | None:
    return None if text is None else msgspec.Raw(text.encode())


def trace_data(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``traces`` row as the API shows it (camelCase, like the POST answer)."""
    trace_id, platform_id, external_id, shape, payload, metadata, external, received, stored, updated = row
    return {
        "id": str(trace_id),
        "status": "stored",
        "platformId": str(platform_id),
        "externalId": external_id,
        "bodyShape": shape,
        "payload": _json(payload),
        "metadata": _json(metadata),
        "externalMetadata": _json(external),
        "receivedAt": iso_utc(received),
        "createdAt": iso_utc(stored),
        "updatedAt": iso_utc(updated),
    }


def dead_lettered(letter: LetterRow, key: KeyInfo | None) -> DeadLetteredTrace:
    """A dead letter as ``key`` may see it (``None``: an operator, who sees everything): a
    restricted key gets only its own platforms among the candidates, and no detail that names
    platforms outside its scope."""
    detail, candidates = letter.detail, list(letter.candidates)
    if key is not None and key.restricted:
        mine = {str(p) for p in key.platform_ids}
        candidates = [c for c in candidates if c in mine]
        if letter.reason == "platform_not_allowed":
            detail = NOT_ALLOWED_FOR_RESTRICTED
    return DeadLetteredTrace(
        id=letter.trace_id,
        externalId=letter.external_id,
        platformId=letter.platform_id,
        receivedAt=_maybe_time(letter.received_at),
        deadLetter=DeadLetterInfo(
            reason=letter.reason,
            stage=letter.stage,
            detail=detail,
            candidates=candidates,
            failedAt=_maybe_time(letter.failed_at),
            attempt=letter.attempt,
        ),
    )


def not_found(trace_id: uuid.UUID, retention_days: int = 0) -> ApiError:
    """The 404. With ``TRACE_RETENTION_DAYS`` set, an id accepted longer ago than that (its UUIDv7
    time says when: nothing is read to know it, so nothing leaks) is said to have expired."""
    why = "it may still be queued"
    if retention.id_expired(trace_id, dt.datetime.now(dt.UTC), retention_days):
        why = f"it was accepted over {retention_days} days ago: traces are kept {retention_days} days, so it may have expired"
    return ApiError(
        404,
        "NOT_FOUND",
        "Trace not found",
        [
            Detail(
                "not_found",
                f"No stored or dead-lettered trace {trace_id} for this API key ({why})",
                "id",
                "path",
            )
        ],
    )


# --------------------------------------------------------------------------------------------------
# Content negotiation


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0  # an unreadable weight: not acceptable
    return 1.0


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header allows gzip (RFC 9110 §12.5.3): ``gzip`` or
    ``x-gzip`` with a weight above 0, or ``*`` above 0 when gzip is not named."""
    named: float | None = None
    wildcard: float | None = None
    for item in accept_encoding.split(","):
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            named = max(named or 0.0, _quality(params))
        elif coding == "*":
            wildcard = _quality(params)
    if named is not None:
        return named > 0
    return wildcard is not None and wildcard > 0


def negotiated(request: web.Request, response: web.Response) -> web.Response:
    """``response``, gzip-compressed when it is large and the client takes gzip."""
    response.headers["Vary"] = "Accept-Encoding"
    body = response.body
    if (
        isinstance(body, bytes)
        and len(body) > GZIP_MIN_BYTES
        and accepts_gzip(request.headers.get("Accept-Encoding", ""))
    ):
        response.enable_compression(web.ContentCoding.gzip)
    return response


# --------------------------------------------------------------------------------------------------
# Reading


def unavailable(exc: Exception) -> ApiError:
    log.warning("trace lookup failed: database unavailable", error=repr(exc))
    return ApiError(
        503,
        "SERVICE_UNAVAILABLE",
        "The trace could not be read right now; retry later",
        [Detail("unavailable", "The database is not reachable", "", "server")],
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def query(
    pool: psycopg_pool.AsyncConnectionPool, sql: str, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """Rows of one read; 503 with ``Retry-After`` while the database is unreachable."""
    try:
        async with pool.connection(timeout=DB_TIMEOUT_SECONDS) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        raise unavailable(exc) from None


def scope_params(key: KeyInfo) -> dict[str, Any]:
    """The key's reach as query parameters: its project and, when restricted, its platforms."""
    return {"project_id": key.project_id, "restricted": key.restricted, "scope": sorted(key.platform_ids)}


def receipt_params(key: KeyInfo) -> dict[str, Any]:
    """:func:`scope_params`, and the key itself (dead letters without a platform are its sender's)."""
    return {**scope_params(key), "key_id": key.id}


def operator_params(project_id: uuid.UUID) -> dict[str, Any]:
    """An operator's reach: the whole project."""
    return {"project_id": project_id, "restricted": False, "scope": [], "key_id": None}


async def find_receipt(
    conn: psycopg.AsyncConnection[Any],
    trace_id: uuid.UUID,
    params: dict[str, Any],
    stored_sql: str = SELECT_TRACE,
) -> Receipt:
    """What became of ``trace_id`` within ``params``' reach (:func:`receipt_params`,
    :func:`operator_params`): stored (``stored_sql``'s row; its WHERE must be :data:`FIND_TRACE`),
    dead-lettered, or nothing known."""
    wanted = {"id": trace_id, **params}
    cur = await conn.execute(stored_sql, wanted)
    row = await cur.fetchone()
    if row is not None:
        return Stored(row)
    cur = await conn.execute(SELECT_LETTER, wanted)
    found = await cur.fetchone()
    if found is None:
        return None
    letter = LetterRow(*found)
    if letter.resolved_at is None:
        return letter
    # Resolved: stored by now (a replay landed between the two reads) — or outside this scope.
    cur = await conn.execute(stored_sql, wanted)
    row = await cur.fetchone()
    return Stored(row) if row is not None else None


async def get_trace(request: web.Request) -> web.Response:
    app = request.app
    key = await authenticate(app[KEY_REGISTRY], request.headers.get(API_KEY_HEADER))
    trace_id = _trace_id(request.match_info["id"])
    try:
        async with app[DB_POOL].connection(timeout=DB_TIMEOUT_SECONDS) as conn:
            found = await find_receipt(conn, trace_id, receipt_params(key))
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
        raise unavailable(exc) from None
    if isinstance(found, Stored):
        return negotiated(request, success(trace_data(found.row), "Trace retrieved"))
    if isinstance(found, LetterRow):
        return negotiated(request, success(dead_lettered(found, key), "Trace dead-lettered"))
    raise not_found(trace_id, app[SETTINGS].trace_retention_days)


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
