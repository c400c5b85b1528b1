"""API keys: created (the full key returned once), listed masked, revoked for good.

Only HMAC-SHA256(pepper, key) and the last four characters are stored; revoking deletes the row and
the NOTIFY of migration 0002 tells every ingest process when it commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from shared.contracts.keys import generate_key, hash_key, last4, masked
from shared.registry.errors import InvalidInput, NotFound, Problem
from shared.registry.projects import get_project, lock_project
from shared.registry.types import ApiKey, CreatedKey, PlatformRef
from shared.registry.validation import clean_name, one

_KEY_ATTEMPTS = 3  # a 238-bit key colliding with a stored one is absurdly unlikely; retry anyway


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
    name = clean_name(name)
    wanted = list(dict.fromkeys(platform_ids or ()))
    for attempt in range(_KEY_ATTEMPTS):
        key = generate_key()
        try:
            async with conn.transaction():
                await lock_project(conn, project_id)
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
    (created_at,) = one(await cur.fetchone())
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
