"""Projects: create, list, find (by id or name), rename, and delete with everything they hold."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import kwargs_row

from shared.registry.errors import Conflict, NotFound, Problem
from shared.registry.types import Project
from shared.registry.validation import as_uuid, clean_name, one, q

_PROJECT_COLUMNS = "id, name, created_at"


async def create_project(conn: psycopg.AsyncConnection[Any], name: str) -> Project:
    name = clean_name(name)
    try:
        cur = await conn.cursor(row_factory=kwargs_row(Project)).execute(
            f"INSERT INTO projects (id, name) VALUES (%s, %s) RETURNING {_PROJECT_COLUMNS}",
            (uuid.uuid4(), name),
        )
    except pg_errors.UniqueViolation:
        raise _project_name_taken(name) from None
    return one(await cur.fetchone())


async def list_projects(conn: psycopg.AsyncConnection[Any]) -> list[Project]:
    cur = await conn.cursor(row_factory=kwargs_row(Project)).execute(
        f"SELECT {_PROJECT_COLUMNS} FROM projects ORDER BY name, id"
    )
    return await cur.fetchall()


async def get_project(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID) -> Project:
    cur = await conn.cursor(row_factory=kwargs_row(Project)).execute(
        f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = %s", (project_id,)
    )
    project = await cur.fetchone()
    if project is None:
        raise project_not_found(project_id)
    return project


async def resolve_project(conn: psycopg.AsyncConnection[Any], ref: str) -> Project:
    """A project by id or, failing that, by name: what operators type on the command line."""
    ref_id = as_uuid(ref)
    cur = await conn.cursor(row_factory=kwargs_row(Project)).execute(
        f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = %s OR name = %s ORDER BY (id = %s) DESC LIMIT 1",
        (ref_id, ref, ref_id),
    )
    project = await cur.fetchone()
    if project is None:
        raise NotFound(
            f"no project with id or name {q(ref)}", [Problem("not_found", "unknown project", "project")]
        )
    return project


async def rename_project(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, name: str) -> Project:
    name = clean_name(name)
    try:
        cur = await conn.cursor(row_factory=kwargs_row(Project)).execute(
            f"UPDATE projects SET name = %s WHERE id = %s RETURNING {_PROJECT_COLUMNS}", (name, project_id)
        )
    except pg_errors.UniqueViolation:
        raise _project_name_taken(name) from None
    project = await cur.fetchone()
    if project is None:
        raise project_not_found(project_id)
    return project


class ProjectContents(msgspec.Struct, frozen=True, kw_only=True):
    """What deleting a project takes with it (shown before an operator confirms)."""

    platforms: int
    keys: int
    traces: int


async def project_contents(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID) -> ProjectContents:
    await get_project(conn, project_id)
    cur = await conn.execute(
        """SELECT (SELECT count(*) FROM platforms WHERE project_id = %(p)s),
                  (SELECT count(*) FROM api_keys WHERE project_id = %(p)s),
                  (SELECT count(*) FROM traces WHERE project_id = %(p)s)""",
        {"p": project_id},
    )
    platforms, keys, traces = one(await cur.fetchone())
    return ProjectContents(platforms=platforms, keys=keys, traces=traces)


async def delete_project(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID) -> None:
    """Delete a project with its platforms, keys (revoked at once) and traces."""
    cur = await conn.execute("DELETE FROM projects WHERE id = %s RETURNING id", (project_id,))
    if await cur.fetchone() is None:
        raise project_not_found(project_id)


def project_not_found(project_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"project {project_id} does not exist", [Problem("not_found", "unknown project", "project_id")]
    )


def _project_name_taken(name: str) -> Conflict:
    msg = f"a project named {q(name)} already exists"
    return Conflict(msg, [Problem("unique", msg, "name")])


async def lock_project(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID) -> None:
    """Hold the project for the transaction so it cannot vanish between checks and inserts."""
    cur = await conn.execute("SELECT 1 FROM projects WHERE id = %s FOR SHARE", (project_id,))
    if await cur.fetchone() is None:
        raise project_not_found(project_id)
