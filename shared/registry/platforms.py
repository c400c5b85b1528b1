"""Platforms of a project, with their routing identifiers (SPEC §2): unique within the project
and type, enforced by the database, and every conflict named precisely."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import kwargs_row

from shared.registry.errors import Conflict, NotFound, Problem
from shared.registry.projects import get_project, lock_project, project_not_found
from shared.registry.types import Platform
from shared.registry.validation import (
    as_uuid,
    check_identifier,
    check_identifiers_match_type,
    check_platform_type,
    clean_name,
    one,
    q,
)

_PLATFORM_COLUMNS = "id, project_id, name, type, workflow_id, chatflow_id, otlp_service_name, created_at"


async def create_platform(
    conn: psycopg.AsyncConnection[Any],
    project_id: uuid.UUID,
    name: str,
    platform_type: str,
    *,
    workflow_id: str | None = None,
    chatflow_id: str | None = None,
    otlp_service_name: str | None = None,
) -> Platform:
    """``otlp_service_name``: OTLP traces whose resource ``service.name`` is this value route
    here (any platform type; unique within the project)."""
    name = clean_name(name)
    type_ = check_platform_type(platform_type)
    workflow_id = check_identifier(workflow_id, "workflow_id")
    chatflow_id = check_identifier(chatflow_id, "chatflow_id")
    otlp_service_name = check_identifier(otlp_service_name, "otlp_service_name")
    check_identifiers_match_type(type_, workflow_id, chatflow_id)
    ids = _RoutingIds(workflow_id, chatflow_id, otlp_service_name)
    try:
        async with conn.transaction():
            await lock_project(conn, project_id)
            cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
                f"""INSERT INTO platforms (id, project_id, name, type, workflow_id, chatflow_id, otlp_service_name)
                    VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_PLATFORM_COLUMNS}""",
                (uuid.uuid4(), project_id, name, type_, workflow_id, chatflow_id, otlp_service_name),
            )
            return one(await cur.fetchone())
    except pg_errors.UniqueViolation as exc:
        raise await _platform_conflict(conn, exc, project_id, name, ids) from None
    except pg_errors.ForeignKeyViolation:
        raise project_not_found(project_id) from None


async def list_platforms(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID) -> list[Platform]:
    await get_project(conn, project_id)
    cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
        f"SELECT {_PLATFORM_COLUMNS} FROM platforms WHERE project_id = %s ORDER BY name, id", (project_id,)
    )
    return await cur.fetchall()


async def get_platform(
    conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, platform_id: uuid.UUID
) -> Platform:
    cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
        f"SELECT {_PLATFORM_COLUMNS} FROM platforms WHERE project_id = %s AND id = %s",
        (project_id, platform_id),
    )
    platform = await cur.fetchone()
    if platform is None:
        await get_project(conn, project_id)  # a missing project is the more useful message
        raise _platform_not_found(platform_id)
    return platform


async def resolve_platform(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, ref: str) -> Platform:
    """A platform of ``project_id`` by id or, failing that, by name."""
    ref_id = as_uuid(ref)
    cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
        f"""SELECT {_PLATFORM_COLUMNS} FROM platforms WHERE project_id = %s AND (id = %s OR name = %s)
            ORDER BY (id = %s) DESC LIMIT 1""",
        (project_id, ref_id, ref, ref_id),
    )
    platform = await cur.fetchone()
    if platform is None:
        raise NotFound(
            f"no platform with id or name {q(ref)} in this project",
            [Problem("not_found", "unknown platform", "platform")],
        )
    return platform


async def resolve_platform_ids(
    conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, refs: Iterable[str]
) -> list[uuid.UUID]:
    """Platform ids from ids or names, for a key's scope. Ids are kept as given, so that
    :func:`create_key` can say precisely when one belongs to another project; names are looked up
    in ``project_id``."""
    ids = []
    for ref in refs:
        ref_id = as_uuid(ref)
        ids.append(ref_id if ref_id is not None else (await resolve_platform(conn, project_id, ref)).id)
    return ids


async def update_platform(
    conn: psycopg.AsyncConnection[Any],
    project_id: uuid.UUID,
    platform_id: uuid.UUID,
    *,
    name: str | msgspec.UnsetType = msgspec.UNSET,
    workflow_id: str | msgspec.UnsetType | None = msgspec.UNSET,
    chatflow_id: str | msgspec.UnsetType | None = msgspec.UNSET,
    otlp_service_name: str | msgspec.UnsetType | None = msgspec.UNSET,
) -> Platform:
    """Change what is given; ``None`` clears an identifier, ``UNSET`` leaves a field alone.
    The type never changes: routing identifiers and key scopes depend on it."""
    try:
        async with conn.transaction():
            current = await _lock_platform(conn, project_id, platform_id)
            new_name = current.name if name is msgspec.UNSET else clean_name(name)
            new_wf = current.workflow_id if workflow_id is msgspec.UNSET else workflow_id
            new_cf = current.chatflow_id if chatflow_id is msgspec.UNSET else chatflow_id
            new_svc = current.otlp_service_name if otlp_service_name is msgspec.UNSET else otlp_service_name
            new_wf = check_identifier(new_wf, "workflow_id")
            new_cf = check_identifier(new_cf, "chatflow_id")
            new_svc = check_identifier(new_svc, "otlp_service_name")
            check_identifiers_match_type(current.type, new_wf, new_cf)
            ids = _RoutingIds(new_wf, new_cf, new_svc)
            cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
                f"""UPDATE platforms SET name = %s, workflow_id = %s, chatflow_id = %s, otlp_service_name = %s
                    WHERE id = %s RETURNING {_PLATFORM_COLUMNS}""",
                (new_name, new_wf, new_cf, new_svc, platform_id),
            )
            return one(await cur.fetchone())
    except pg_errors.UniqueViolation as exc:
        raise await _platform_conflict(conn, exc, project_id, new_name, ids) from None


async def delete_platform(
    conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, platform_id: uuid.UUID
) -> None:
    """Delete a platform. Keys restricted to it lose it from their scope and stay restricted, so a
    key never widens to the whole project because its platforms went away."""
    cur = await conn.execute(
        "DELETE FROM platforms WHERE project_id = %s AND id = %s RETURNING id", (project_id, platform_id)
    )
    if await cur.fetchone() is None:
        await get_project(conn, project_id)
        raise _platform_not_found(platform_id)


async def _lock_platform(
    conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, platform_id: uuid.UUID
) -> Platform:
    cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
        f"SELECT {_PLATFORM_COLUMNS} FROM platforms WHERE project_id = %s AND id = %s FOR UPDATE",
        (project_id, platform_id),
    )
    platform = await cur.fetchone()
    if platform is None:
        await get_project(conn, project_id)
        raise _platform_not_found(platform_id)
    return platform


def _platform_not_found(platform_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"platform {platform_id} does not exist in this project",
        [Problem("not_found", "unknown platform", "platform_id")],
    )


class _RoutingIds(msgspec.Struct, frozen=True):
    """A platform's routing identifiers as written (to name the one a conflict is about)."""

    workflow_id: str | None
    chatflow_id: str | None
    otlp_service_name: str | None


async def _platform_conflict(
    conn: psycopg.AsyncConnection[Any],
    exc: pg_errors.UniqueViolation,
    project_id: uuid.UUID,
    name: str,
    ids: _RoutingIds,
) -> Conflict:
    """Say exactly which name or identifier is taken, and by which platform."""
    constraint = exc.diag.constraint_name or ""
    if constraint == "uq_platforms_project_type_workflow":
        return await _identifier_taken(conn, project_id, "n8n", "workflow_id", ids.workflow_id)
    if constraint == "uq_platforms_project_type_chatflow":
        return await _identifier_taken(conn, project_id, "flowise", "chatflow_id", ids.chatflow_id)
    if constraint == "uq_platforms_project_otlp_service_name":
        return await _identifier_taken(conn, project_id, None, "otlp_service_name", ids.otlp_service_name)
    if constraint == "uq_platforms_project_id_name":
        msg = f"a platform named {q(name)} already exists in this project"
        return Conflict(msg, [Problem("unique", msg, "name")])
    return Conflict("this platform collides with an existing one", [Problem("unique", constraint, "")])


async def _identifier_taken(
    conn: psycopg.AsyncConnection[Any],
    project_id: uuid.UUID,
    type_: str | None,
    field: str,
    value: str | None,
) -> Conflict:
    """``type_`` None: the identifier is unique within the project whatever the type."""
    assert field in ("workflow_id", "chatflow_id", "otlp_service_name")
    cur = await conn.execute(
        f"""SELECT id, name, type FROM platforms
            WHERE project_id = %s AND (%s::text IS NULL OR type = %s) AND {field} = %s""",
        (project_id, type_, type_, value),
    )
    row = await cur.fetchone()
    if row:
        holder = f"{row[2]} platform {q(row[1])} ({row[0]})"
    else:
        holder = f"another {type_} platform" if type_ else "another platform"
    msg = f"{field} {q(value)} is already used by {holder}"
    return Conflict(msg, [Problem("unique", msg, field)])
