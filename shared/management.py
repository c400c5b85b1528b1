"""Projects, platforms and API keys (SPEC §2): the only place with their rules.

The CLI (``shared.cli.projects|platforms|keys``) and the admin HTTP API (``ingest_api.admin``) are
thin shells around these functions, so both enforce exactly the same rules and say the same thing
when something is refused. Every function takes a ``psycopg.AsyncConnection`` in autocommit mode;
multi-statement work runs inside ``conn.transaction()`` (a savepoint when the caller already holds a
transaction), so a failure leaves nothing half-done.

The database has the last word on uniqueness (unique constraints and partial unique indexes, see
``shared.db.schema``): checks done here first only exist to produce precise messages, and the
constraint violations that concurrent writers can still hit are translated into the same messages.

Keys: the full key exists only in the return value of :func:`create_key`. The database holds
HMAC-SHA256(pepper, key) and the last four characters. Revoking deletes the row; the triggers of
migration 0002 send a NOTIFY on :data:`REGISTRY_CHANNEL` in the same transaction, so listeners
(the ingest processes' key caches) hear about it the moment it commits.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

import msgspec
import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import kwargs_row

from shared.keys import generate_key, hash_key, is_well_formed, last4, masked
from shared.logging import KEY_PATTERN, REDACTED

REGISTRY_CHANNEL = "mibo_registry"
"""PostgreSQL NOTIFY channel: every change to projects, platforms, keys or key scopes is announced here."""

PlatformType = Literal["n8n", "flowise", "http_api", "custom"]
PLATFORM_TYPES: tuple[str, ...] = get_args(PlatformType)
MAX_NAME_LENGTH = 200
MAX_IDENTIFIER_LENGTH = 200
_KEY_ATTEMPTS = 3  # a 238-bit key colliding with a stored one is absurdly unlikely; retry anyway


# --------------------------------------------------------------------------------------------------
# Errors


class Problem(msgspec.Struct, frozen=True):
    """One precise reason a request was refused; ``path`` names the offending field."""

    type: str
    msg: str
    path: str = ""


class ManagementError(Exception):
    """A refused operation. ``status`` and ``code`` are what the HTTP API answers with."""

    status = 400
    code = "VALIDATION_ERROR"

    def __init__(self, message: str, details: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


class InvalidInput(ManagementError):
    """The request itself is wrong: empty name, unknown type, identifier on the wrong type, ..."""

    status = 400
    code = "VALIDATION_ERROR"


class NotFound(ManagementError):
    status = 404
    code = "NOT_FOUND"


class Conflict(ManagementError):
    """The request collides with existing data (a name or routing identifier already taken)."""

    status = 409
    code = "CONFLICT"


def _invalid(path: str, msg: str, type_: str = "value_error") -> InvalidInput:
    return InvalidInput(msg, [Problem(type_, msg, path)])


# --------------------------------------------------------------------------------------------------
# What the functions return (also the admin API's JSON bodies, encoded as they are)


class Project(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    name: str
    created_at: dt.datetime


class Platform(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    type: str
    workflow_id: str | None
    chatflow_id: str | None
    otlp_service_name: str | None  # routes OTLP traces whose resource has this service.name
    created_at: dt.datetime


class PlatformRef(msgspec.Struct, frozen=True):
    """A platform in a key's scope: its id and, for humans, its name."""

    id: uuid.UUID
    name: str


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listings show it: never the key itself, only ``mibo_...`` + its last 4 characters.

    ``restricted`` tells an unrestricted key (``platform_ids == []``, all platforms of the project)
    from a restricted key whose platforms were all deleted (``platform_ids == []``, no platform).
    """

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    masked: str
    restricted: bool
    platform_ids: list[uuid.UUID]
    platforms: list[PlatformRef]
    created_at: dt.datetime
    last_used_at: dt.datetime | None


class CreatedKey(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to :func:`create_key`: the only object that ever holds the full key."""

    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    key: str
    masked: str
    restricted: bool
    platform_ids: list[uuid.UUID]
    platforms: list[PlatformRef]
    created_at: dt.datetime


class KeyInfo(msgspec.Struct, frozen=True):
    """What the ingest hot path needs to know about a key, cached by its hash."""

    id: uuid.UUID
    project_id: uuid.UUID
    restricted: bool
    platform_ids: frozenset[uuid.UUID]


# --------------------------------------------------------------------------------------------------
# Input checks


def _clean_name(value: str, path: str = "name") -> str:
    """Names are for humans: surrounding whitespace is dropped, control characters refused."""
    name = value.strip()
    if not name:
        raise _invalid(path, f"{path} must not be empty", "missing")
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(path, f"{path} is longer than {MAX_NAME_LENGTH} characters")
    if _has_control_characters(name):
        raise _invalid(path, f"{path} must not contain control characters")
    return name


def _check_identifier(value: str | None, path: str) -> str | None:
    """Routing identifiers are compared exactly with trace metadata, so they are never altered:
    a value with surrounding whitespace is refused rather than silently trimmed."""
    if value is None:
        return None
    if not value.strip():
        raise _invalid(path, f"{path} must not be empty (leave it out, or null, for none)", "missing")
    if value != value.strip():
        raise _invalid(path, f"{path} must not start or end with whitespace")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise _invalid(path, f"{path} is longer than {MAX_IDENTIFIER_LENGTH} characters")
    if _has_control_characters(value):
        raise _invalid(path, f"{path} must not contain control characters")
    return value


def _q(text: str | None) -> str:
    """A user-given value quoted in a message, so spaces and empty strings stay visible. Anything
    shaped like an API key is redacted: a key pasted in the wrong place must not be echoed back."""
    return '"' + KEY_PATTERN.sub(REDACTED, str(text)).replace('"', '\\"') + '"'


def _has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _check_platform_type(type_: str) -> str:
    if type_ not in PLATFORM_TYPES:
        raise _invalid(
            "type", f"unknown platform type {_q(type_)}; expected one of: {', '.join(PLATFORM_TYPES)}", "enum"
        )
    return type_


def _check_identifiers_match_type(type_: str, workflow_id: str | None, chatflow_id: str | None) -> None:
    if workflow_id is not None and type_ != "n8n":
        raise _invalid("workflow_id", f"workflow_id is only for n8n platforms, not {type_}")
    if chatflow_id is not None and type_ != "flowise":
        raise _invalid("chatflow_id", f"chatflow_id is only for flowise platforms, not {type_}")


def parse_uuid(value: str, path: str = "id") -> uuid.UUID:
    """A UUID given as text (CLI argument, URL segment), or a precise validation error."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _invalid(path, f"{path} is not a valid UUID: {_q(value)}", "uuid_parsing") from None


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# Projects


_PROJECT_COLUMNS = "id, name, created_at"


async def create_project(conn: psycopg.AsyncConnection[Any], name: str) -> Project:
    name = _clean_name(name)
    try:
        cur = await conn.cursor(row_factory=kwargs_row(Project)).execute(
            f"INSERT INTO projects (id, name) VALUES (%s, %s) RETURNING {_PROJECT_COLUMNS}",
            (uuid.uuid4(), name),
        )
    except pg_errors.UniqueViolation:
        raise _project_name_taken(name) from None
    return _one(await cur.fetchone())


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
        raise _project_not_found(project_id)
    return project


async def resolve_project(conn: psycopg.AsyncConnection[Any], ref: str) -> Project:
    """A project by id or, failing that, by name: what operators type on the command line."""
    ref_id = _as_uuid(ref)
    cur = await conn.cursor(row_factory=kwargs_row(Project)).execute(
        f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = %s OR name = %s ORDER BY (id = %s) DESC LIMIT 1",
        (ref_id, ref, ref_id),
    )
    project = await cur.fetchone()
    if project is None:
        raise NotFound(
            f"no project with id or name {_q(ref)}", [Problem("not_found", "unknown project", "project")]
        )
    return project


async def rename_project(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, name: str) -> Project:
    name = _clean_name(name)
    try:
        cur = await conn.cursor(row_factory=kwargs_row(Project)).execute(
            f"UPDATE projects SET name = %s WHERE id = %s RETURNING {_PROJECT_COLUMNS}", (name, project_id)
        )
    except pg_errors.UniqueViolation:
        raise _project_name_taken(name) from None
    project = await cur.fetchone()
    if project is None:
        raise _project_not_found(project_id)
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
    platforms, keys, traces = _one(await cur.fetchone())
    return ProjectContents(platforms=platforms, keys=keys, traces=traces)


async def delete_project(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID) -> None:
    """Delete a project with its platforms, keys (revoked at once) and traces."""
    cur = await conn.execute("DELETE FROM projects WHERE id = %s RETURNING id", (project_id,))
    if await cur.fetchone() is None:
        raise _project_not_found(project_id)


def _project_not_found(project_id: uuid.UUID) -> NotFound:
    return NotFound(
        f"project {project_id} does not exist", [Problem("not_found", "unknown project", "project_id")]
    )


def _project_name_taken(name: str) -> Conflict:
    msg = f"a project named {_q(name)} already exists"
    return Conflict(msg, [Problem("unique", msg, "name")])


# --------------------------------------------------------------------------------------------------
# Platforms


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
    name = _clean_name(name)
    type_ = _check_platform_type(platform_type)
    workflow_id = _check_identifier(workflow_id, "workflow_id")
    chatflow_id = _check_identifier(chatflow_id, "chatflow_id")
    otlp_service_name = _check_identifier(otlp_service_name, "otlp_service_name")
    _check_identifiers_match_type(type_, workflow_id, chatflow_id)
    ids = _RoutingIds(workflow_id, chatflow_id, otlp_service_name)
    try:
        async with conn.transaction():
            await _lock_project(conn, project_id)
            cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
                f"""INSERT INTO platforms (id, project_id, name, type, workflow_id, chatflow_id, otlp_service_name)
                    VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_PLATFORM_COLUMNS}""",
                (uuid.uuid4(), project_id, name, type_, workflow_id, chatflow_id, otlp_service_name),
            )
            return _one(await cur.fetchone())
    except pg_errors.UniqueViolation as exc:
        raise await _platform_conflict(conn, exc, project_id, name, ids) from None
    except pg_errors.ForeignKeyViolation:
        raise _project_not_found(project_id) from None


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
    ref_id = _as_uuid(ref)
    cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
        f"""SELECT {_PLATFORM_COLUMNS} FROM platforms WHERE project_id = %s AND (id = %s OR name = %s)
            ORDER BY (id = %s) DESC LIMIT 1""",
        (project_id, ref_id, ref, ref_id),
    )
    platform = await cur.fetchone()
    if platform is None:
        raise NotFound(
            f"no platform with id or name {_q(ref)} in this project",
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
        ref_id = _as_uuid(ref)
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
            new_name = current.name if name is msgspec.UNSET else _clean_name(name)
            new_wf = current.workflow_id if workflow_id is msgspec.UNSET else workflow_id
            new_cf = current.chatflow_id if chatflow_id is msgspec.UNSET else chatflow_id
            new_svc = current.otlp_service_name if otlp_service_name is msgspec.UNSET else otlp_service_name
            new_wf = _check_identifier(new_wf, "workflow_id")
            new_cf = _check_identifier(new_cf, "chatflow_id")
            new_svc = _check_identifier(new_svc, "otlp_service_name")
            _check_identifiers_match_type(current.type, new_wf, new_cf)
            ids = _RoutingIds(new_wf, new_cf, new_svc)
            cur = await conn.cursor(row_factory=kwargs_row(Platform)).execute(
                f"""UPDATE platforms SET name = %s, workflow_id = %s, chatflow_id = %s, otlp_service_name = %s
                    WHERE id = %s RETURNING {_PLATFORM_COLUMNS}""",
                (new_name, new_wf, new_cf, new_svc, platform_id),
            )
            return _one(await cur.fetchone())
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


async def _lock_project(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID) -> None:
    """Hold the project for the transaction so it cannot vanish between checks and inserts."""
    cur = await conn.execute("SELECT 1 FROM projects WHERE id = %s FOR SHARE", (project_id,))
    if await cur.fetchone() is None:
        raise _project_not_found(project_id)


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
        msg = f"a platform named {_q(name)} already exists in this project"
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
        holder = f"{row[2]} platform {_q(row[1])} ({row[0]})"
    else:
        holder = f"another {type_} platform" if type_ else "another platform"
    msg = f"{field} {_q(value)} is already used by {holder}"
    return Conflict(msg, [Problem("unique", msg, field)])


# --------------------------------------------------------------------------------------------------
# API keys


async def create_key(
    conn: psycopg.AsyncConnection[Any],
    pepper: str,
    project_id: uuid.UUID,
    name: str,
    platform_ids: Iterable[uuid.UUID] | None = None,
) -> CreatedKey:
    """Create a key; the returned object is the only place the full key will ever be.

    ``platform_ids`` absent or empty: unrestricted (all platforms of the project, now and later).
    Otherwise restricted to exactly these platforms, which must all belong to ``project_id``.
    """
    if not pepper:
        raise ValueError("an empty pepper would make key hashes unkeyed; configure KEY_PEPPER")
    name = _clean_name(name)
    wanted = list(dict.fromkeys(platform_ids or ()))
    for attempt in range(_KEY_ATTEMPTS):
        key = generate_key()
        try:
            async with conn.transaction():
                await _lock_project(conn, project_id)
                scope = await _check_scope(conn, project_id, wanted)
                return await _insert_key(conn, pepper, key, project_id, name, scope)
        except pg_errors.UniqueViolation:
            if attempt == _KEY_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _check_scope(
    conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, wanted: list[uuid.UUID]
) -> list[PlatformRef]:
    """The scope's platforms, locked against deletion; refuses any that is not of this project."""
    if not wanted:
        return []
    cur = await conn.execute(
        "SELECT id, project_id, name FROM platforms WHERE id = ANY(%s) FOR SHARE", (wanted,)
    )
    found = {row[0]: row for row in await cur.fetchall()}
    problems = []
    for index, platform_id in enumerate(wanted):
        row = found.get(platform_id)
        if row is None:
            msg = f"platform {platform_id} does not exist"
        elif row[1] != project_id:
            msg = f"platform {platform_id} belongs to another project; a key can only be scoped to its own project's platforms"
        else:
            continue
        problems.append(Problem("platform_scope", msg, f"platform_ids[{index}]"))
    if problems:
        raise InvalidInput("; ".join(p.msg for p in problems), problems)
    return [PlatformRef(pid, found[pid][2]) for pid in wanted]


async def _insert_key(
    conn: psycopg.AsyncConnection[Any],
    pepper: str,
    key: str,
    project_id: uuid.UUID,
    name: str,
    scope: list[PlatformRef],
) -> CreatedKey:
    key_id = uuid.uuid4()
    cur = await conn.execute(
        """INSERT INTO api_keys (id, project_id, name, key_hash, last4, restricted)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING created_at""",
        (key_id, project_id, name, hash_key(pepper, key), last4(key), bool(scope)),
    )
    (created_at,) = _one(await cur.fetchone())
    if scope:
        async with conn.cursor() as many:
            await many.executemany(
                "INSERT INTO api_key_platforms (api_key_id, platform_id) VALUES (%s, %s)",
                [(key_id, p.id) for p in scope],
            )
    return CreatedKey(
        id=key_id,
        project_id=project_id,
        name=name,
        key=key,
        masked=masked(last4(key)),
        restricted=bool(scope),
        platform_ids=[p.id for p in scope],
        platforms=scope,
        created_at=created_at,
    )


async def list_keys(conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID) -> list[ApiKey]:
    await get_project(conn, project_id)
    cur = await conn.execute(
        """SELECT k.id, k.project_id, k.name, k.last4, k.restricted, k.created_at, k.last_used_at,
                  coalesce(array_agg(p.id ORDER BY p.name, p.id) FILTER (WHERE p.id IS NOT NULL), '{}'),
                  coalesce(array_agg(p.name ORDER BY p.name, p.id) FILTER (WHERE p.id IS NOT NULL), '{}')
           FROM api_keys k
           LEFT JOIN api_key_platforms kp ON kp.api_key_id = k.id
           LEFT JOIN platforms p ON p.id = kp.platform_id
           WHERE k.project_id = %s
           GROUP BY k.id
           ORDER BY k.created_at, k.id""",
        (project_id,),
    )
    return [_api_key(row) for row in await cur.fetchall()]


def _api_key(row: tuple[Any, ...]) -> ApiKey:
    key_id, project_id, name, last_four, restricted, created_at, last_used_at, ids, names = row
    return ApiKey(
        id=key_id,
        project_id=project_id,
        name=name,
        masked=masked(last_four),
        restricted=restricted,
        platform_ids=list(ids),
        platforms=[PlatformRef(i, n) for i, n in zip(ids, names, strict=True)],
        created_at=created_at,
        last_used_at=last_used_at,
    )


async def revoke_key(
    conn: psycopg.AsyncConnection[Any], key_id: uuid.UUID, *, project_id: uuid.UUID | None = None
) -> None:
    """Delete the key for good. The NOTIFY of migration 0002 goes out when this commits, so every
    ingest process drops the key from its cache at once. ``project_id``, when given, must match."""
    cur = await conn.execute(
        "DELETE FROM api_keys WHERE id = %s AND (%s::uuid IS NULL OR project_id = %s) RETURNING id",
        (key_id, project_id, project_id),
    )
    if await cur.fetchone() is None:
        if project_id is not None:
            await get_project(conn, project_id)
        raise NotFound(
            f"API key {key_id} does not exist", [Problem("not_found", "unknown API key", "key_id")]
        )


# --------------------------------------------------------------------------------------------------
# Key lookup for the ingest hot path


_KEY_INFO_SELECT = """
    SELECT k.key_hash, k.id, k.project_id, k.restricted,
           coalesce(array_agg(kp.platform_id) FILTER (WHERE kp.platform_id IS NOT NULL), '{}')
    FROM api_keys k
    LEFT JOIN api_key_platforms kp ON kp.api_key_id = k.id
"""


def _key_info(row: tuple[Any, ...]) -> tuple[bytes, KeyInfo]:
    key_hash, key_id, project_id, restricted, platform_ids = row
    return bytes(key_hash), KeyInfo(key_id, project_id, restricted, frozenset(platform_ids))


async def load_key_registry(conn: psycopg.AsyncConnection[Any]) -> dict[bytes, KeyInfo]:
    """Every key by its hash: what an ingest process loads at start-up and after a NOTIFY."""
    cur = await conn.execute(_KEY_INFO_SELECT + " GROUP BY k.id")
    return dict(_key_info(row) for row in await cur.fetchall())


async def fetch_key(conn: psycopg.AsyncConnection[Any], key_hash: bytes) -> KeyInfo | None:
    cur = await conn.execute(_KEY_INFO_SELECT + " WHERE k.key_hash = %s GROUP BY k.id", (key_hash,))
    row = await cur.fetchone()
    return None if row is None else _key_info(row)[1]


async def lookup(conn: psycopg.AsyncConnection[Any], pepper: str, presented_key: str) -> KeyInfo | None:
    """The key's facts, or None for an unknown key. Malformed keys never reach the database, so
    garbage in ``x-api-key`` costs no query."""
    if not is_well_formed(presented_key):
        return None
    return await fetch_key(conn, hash_key(pepper, presented_key))


def _one(row: Any) -> Any:
    """The row a RETURNING or aggregate query always yields (asserted, for the type checker too)."""
    assert row is not None
    return row
