"""Key lookup for the ingest hot path: :class:`KeyInfo`, all keys at once, or one by hash."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import psycopg

from shared.contracts.keys import hash_key, is_well_formed


class KeyInfo(msgspec.Struct, frozen=True):
    """What the ingest hot path needs to know about a key, cached by its hash."""

    id: uuid.UUID
    project_id: uuid.UUID
    restricted: bool
    platform_ids: frozenset[uuid.UUID]


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
