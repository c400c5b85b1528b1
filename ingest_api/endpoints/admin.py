"""Admin HTTP API (SPEC §2): projects, platforms and API keys over JSON.

A thin shell around ``shared.registry``, which holds every rule; this module only decodes
requests, checks the admin token and encodes answers. Bodies are the management structs as they
are (201 with the created object, 200 with a list or the updated object, 204 with no body); errors
leave in the SPEC §3 envelope through ``ApiError``.

Off by default: with no ``ADMIN_TOKEN`` configured no route is mounted, so every ``/admin`` path is
a plain 404 and nothing hints that an admin API exists. With a token, every route needs
``Authorization: Bearer <token>``, compared in constant time as the bytes that were sent (a header
that is not UTF-8 is simply a wrong token: 401).

The request structs carry the rules of ``shared.registry`` that a schema can state (lengths, no
control characters, no blank names, known platform types, no unknown fields), so msgspec refuses
what the registry would, and ``/openapi.json`` — generated from these structs — says so too.
"""

from __future__ import annotations

import functools
import hmac
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, TypeVar

import msgspec
import psycopg
import structlog
from aiohttp import web
from msgspec import Meta

from ingest_api.body import BodyInvalid, check_json
from ingest_api.context import DB_POOL, SETTINGS
from ingest_api.responses import ApiError, Detail, detail_from_msgspec, json_response
from shared import registry
from shared.registry import MAX_IDENTIFIER_LENGTH, MAX_NAME_LENGTH, ManagementError, PlatformType

PREFIX = "/admin/v1"
PATH_FIELDS = frozenset({"project_id", "platform_id", "key_id"})

log = structlog.get_logger("admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Body = TypeVar("Body", bound=msgspec.Struct)


# --------------------------------------------------------------------------------------------------
# Request bodies. Unknown fields are refused: a misspelt "workflowId" must not be silently dropped.
# Patterns are written for both Python's re (msgspec) and ECMA-262 (JSON Schema): explicit classes,
# no \s (the two disagree on U+FEFF). Control characters are Unicode's Cc; whitespace is what
# Python's str.strip() removes (shared.registry strips names and refuses padded identifiers).

_CONTROL = r"\x00-\x1f\x7f-\x9f"
_SPACE = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NAME_RULE = f"1-{MAX_NAME_LENGTH} characters, not only whitespace, no control characters"
IDENTIFIER_RULE = (
    f"1-{MAX_IDENTIFIER_LENGTH} characters, no control characters, no leading or trailing whitespace"
)
Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=f"^[^{_CONTROL}]*[^{_SPACE}{_CONTROL}][^{_CONTROL}]*$",
        description=NAME_RULE + " (surrounding whitespace is dropped)",
    ),
]
Identifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_IDENTIFIER_LENGTH,
        pattern=f"^[^{_SPACE}{_CONTROL}](?:[^{_CONTROL}]*[^{_SPACE}{_CONTROL}])?$",
        description=IDENTIFIER_RULE,
    ),
]
OtlpServiceName = Annotated[
    Identifier,
    Meta(
        description="OpenTelemetry traces whose resource service.name is this value route to the "
        "platform (any type; unique within the project)"
    ),
]
RULES = {
    "name": NAME_RULE,
    "workflow_id": IDENTIFIER_RULE,
    "chatflow_id": IDENTIFIER_RULE,
    "otlp_service_name": IDENTIFIER_RULE,
}


class ProjectIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name


class PlatformIn(msgspec.Struct, forbid_unknown_fields=True):
    """``workflow_id`` is for n8n platforms only, ``chatflow_id`` for Flowise platforms only."""

    name: Name
    type: PlatformType
    workflow_id: Identifier | None = None
    chatflow_id: Identifier | None = None
    otlp_service_name: OtlpServiceName | None = None


# What the types cannot say: a routing id belongs to one platform type (shared.registry refuses it
# on any other); stated on the request body in /openapi.json.
PlatformInSchema = Annotated[
    PlatformIn,
    Meta(
        extra_json_schema={
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": "n8n"}}},
                    "else": {"properties": {"workflow_id": {"type": "null"}}},
                },
                {
                    "if": {"properties": {"type": {"const": "flowise"}}},
                    "else": {"properties": {"chatflow_id": {"type": "null"}}},
                },
            ]
        }
    ),
]


class PlatformPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Any of the fields; ``null`` clears a routing identifier, an absent field is left alone."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    workflow_id: Identifier | msgspec.UnsetType | None = msgspec.UNSET
    chatflow_id: Identifier | msgspec.UnsetType | None = msgspec.UNSET
    otlp_service_name: OtlpServiceName | msgspec.UnsetType | None = msgspec.UNSET


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    """``platform_ids`` absent, null or ``[]``: the key may send to every platform of the project."""

    name: Name
    platform_ids: list[uuid.UUID] | None = None


# --------------------------------------------------------------------------------------------------
# Plumbing: token, errors, decoding, connections


def setup(app: web.Application) -> None:
    """Mount /admin/v1/* on ``app`` when an admin token is configured; otherwise mount nothing."""
    if not app[SETTINGS].admin_token:
        return
    routes = app.router
    routes.add_post(f"{PREFIX}/projects", _admin(create_project))
    routes.add_get(f"{PREFIX}/projects", _admin(list_projects))
    routes.add_post(f"{PREFIX}/projects/{{pid}}/platforms", _admin(create_platform))
    routes.add_get(f"{PREFIX}/projects/{{pid}}/platforms", _admin(list_platforms))
    routes.add_patch(f"{PREFIX}/projects/{{pid}}/platforms/{{id}}", _admin(update_platform))
    routes.add_delete(f"{PREFIX}/projects/{{pid}}/platforms/{{id}}", _admin(delete_platform))
    routes.add_post(f"{PREFIX}/projects/{{pid}}/keys", _admin(create_key))
    routes.add_get(f"{PREFIX}/projects/{{pid}}/keys", _admin(list_keys))
    routes.add_delete(f"{PREFIX}/projects/{{pid}}/keys/{{id}}", _admin(revoke_key))


def _admin(handler: Handler) -> Handler:
    """Every admin route: the token first, then the handler; refusals become the error envelope."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        _authorize(request)
        try:
            return await handler(request)
        except ManagementError as err:
            raise _api_error(err) from None

    return guarded


def _authorize(request: web.Request) -> None:
    expected = request.app[SETTINGS].admin_token.encode()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encode them back the same way,
    # so bytes that are not UTF-8 compare as what they are (a wrong token), never raise.
    presented = token.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented, expected):
        raise ApiError(
            401,
            "UNAUTHORIZED",
            "missing or invalid admin token: send Authorization: Bearer <ADMIN_TOKEN>",
            [Detail("unauthorized", "admin token required", "Authorization", "header")],
            headers={"WWW-Authenticate": 'Bearer realm="mibo-ingest admin"'},
        )


def _api_error(err: ManagementError) -> ApiError:
    details = [
        Detail(p.type, p.msg, p.path, "path" if p.path in PATH_FIELDS else "body") for p in err.details
    ]
    return ApiError(err.status, err.code, err.message, details)


def _refuse_trailing_newline(body: msgspec.Struct) -> None:
    """Python's ``$`` also matches before a final newline, ECMA-262's does not: refuse the one
    string the shared patterns would let through, so the server is exactly as strict as the
    schema says."""
    for field in body.__struct_fields__:
        value = getattr(body, field)
        if field in RULES and isinstance(value, str) and value.endswith("\n"):
            msg = f"{field} must be {RULES[field]}"
            raise ApiError(
                400, "VALIDATION_ERROR", f"invalid request body: {msg}", [Detail("value_error", msg, field)]
            )


async def _decode(request: web.Request, body_type: type[Body]) -> Body:
    raw = await request.read()
    try:
        check_json(raw)
        body = msgspec.json.decode(raw, type=body_type)
    except BodyInvalid as exc:
        raise ApiError(400, "VALIDATION_ERROR", f"invalid request body: {exc.message}", exc.details) from None
    except RecursionError:  # not reachable after check_json; a backstop, never a 500
        msg = "the body is nested too deeply"
        raise ApiError(
            400, "VALIDATION_ERROR", f"invalid request body: {msg}", [Detail("too_deep", msg, "", "body")]
        ) from None
    except msgspec.ValidationError as exc:
        detail = detail_from_msgspec(exc, RULES)
        raise ApiError(400, "VALIDATION_ERROR", f"invalid request body: {detail.msg}", [detail]) from None
    except msgspec.DecodeError as exc:
        msg = (
            f"the body must be a JSON object, and is not valid JSON ({exc})"
            if raw.strip()
            else "the body is empty; a JSON object is required"
        )
        raise ApiError(
            400, "VALIDATION_ERROR", f"invalid request body: {msg}", [Detail("json_invalid", msg, "", "body")]
        ) from None
    _refuse_trailing_newline(body)
    return body


def _path_uuid(request: web.Request, segment: str, field: str) -> uuid.UUID:
    return registry.parse_uuid(request.match_info[segment], field)


def _project_id(request: web.Request) -> uuid.UUID:
    return _path_uuid(request, "pid", "project_id")


def _connection(request: web.Request) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
    return request.app[DB_POOL].connection()


def _no_content() -> web.Response:
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------
# Handlers, in the order of SPEC §2's table


async def create_project(request: web.Request) -> web.Response:
    body = await _decode(request, ProjectIn)
    async with _connection(request) as conn:
        project = await registry.create_project(conn, body.name)
    log.info("project created", project_id=str(project.id))
    return json_response(project, status=201)


async def list_projects(request: web.Request) -> web.Response:
    async with _connection(request) as conn:
        return json_response(await registry.list_projects(conn))


async def create_platform(request: web.Request) -> web.Response:
    project_id = _project_id(request)
    body = await _decode(request, PlatformIn)
    async with _connection(request) as conn:
        platform = await registry.create_platform(
            conn,
            project_id,
            body.name,
            body.type,
            workflow_id=body.workflow_id,
            chatflow_id=body.chatflow_id,
            otlp_service_name=body.otlp_service_name,
        )
    log.info("platform created", project_id=str(project_id), platform_id=str(platform.id))
    return json_response(platform, status=201)


async def list_platforms(request: web.Request) -> web.Response:
    project_id = _project_id(request)
    async with _connection(request) as conn:
        return json_response(await registry.list_platforms(conn, project_id))


async def update_platform(request: web.Request) -> web.Response:
    project_id = _project_id(request)
    platform_id = _path_uuid(request, "id", "platform_id")
    body = await _decode(request, PlatformPatch)
    async with _connection(request) as conn:
        platform = await registry.update_platform(
            conn,
            project_id,
            platform_id,
            name=body.name,
            workflow_id=body.workflow_id,
            chatflow_id=body.chatflow_id,
            otlp_service_name=body.otlp_service_name,
        )
    log.info("platform updated", project_id=str(project_id), platform_id=str(platform_id))
    return json_response(platform)


async def delete_platform(request: web.Request) -> web.Response:
    project_id = _project_id(request)
    platform_id = _path_uuid(request, "id", "platform_id")
    async with _connection(request) as conn:
        await registry.delete_platform(conn, project_id, platform_id)
    log.info("platform deleted", project_id=str(project_id), platform_id=str(platform_id))
    return _no_content()


async def create_key(request: web.Request) -> web.Response:
    project_id = _project_id(request)
    body = await _decode(request, KeyIn)
    pepper = request.app[SETTINGS].key_pepper
    async with _connection(request) as conn:
        created = await registry.create_key(conn, pepper, project_id, body.name, body.platform_ids)
    log.info(
        "api key created", project_id=str(project_id), key_id=str(created.id), restricted=created.restricted
    )
    return json_response(created, status=201)


async def list_keys(request: web.Request) -> web.Response:
    project_id = _project_id(request)
    async with _connection(request) as conn:
        return json_response(await registry.list_keys(conn, project_id))


async def revoke_key(request: web.Request) -> web.Response:
    project_id = _project_id(request)
    key_id = _path_uuid(request, "id", "key_id")
    async with _connection(request) as conn:
        await registry.revoke_key(conn, key_id, project_id=project_id)
    log.info("api key revoked", project_id=str(project_id), key_id=str(key_id))
    return _no_content()
