"""Fewer, cheaper statements per storage batch: what ``write.py`` sends around the upsert.

The statements of ``sql.py`` and ``shared.db.cancellations``, with the same meaning, combined so a
batch costs fewer round trips (every statement costs the worker 20 to 40 µs of CPU however small it
is), and with their long id lists sent packed instead of as a list psycopg dumps element by
element (about 1 µs per id): 16 bytes an id, concatenated into one ``bytea`` (``uuid_bytes``, 0.1 µs
per id) that PostgreSQL cuts back into a ``uuid[]`` (``_uuids``); the few platform ids of a batch go
as an array literal (``uuid_array``):

- ``LOCKS``: first thing in the transaction, in one simple-query message and this order: the
  dead-letter indexer's advisory lock, shared (``sql.LOCK_DLQ_INDEX_SHARED``: why), then the
  cancellation fence's ``SHARE`` lock (``shared.db.cancellations.LOCK``: why);
- ``ADMIT``: the live platforms among the batch's and the cancelled ids among the batch's
  (``cancellations.CANCELLED``), in one statement, read under those locks. The platforms are
  locked ``FOR KEY SHARE`` until commit: a platform deleted concurrently waits for this
  transaction; one deleted before it began is not found, and its traces are dead-lettered instead
  of stored (SPEC §6);
- ``ALIAS_AND_RESOLVE``: in one statement (a data-modifying ``WITH``), every accepted id of a trace
  with an identity beyond its own id (each x-request-id version, each OTLP export) goes into
  ``trace_aliases``, so GET /public/traces/{id} with any id a 202 answered finds the trace; and the
  batch's entries in the dead-letter index are resolved (a dead-lettered trace stored after all);
  ``RESOLVE`` alone when the batch has nothing to alias.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from shared.db import cancellations
from storage_worker.sql import LOCK_DLQ_INDEX_SHARED

LOCKS = f"{LOCK_DLQ_INDEX_SHARED}; {cancellations.LOCK}"


def _uuids(name: str) -> str:
    """SQL for the ``uuid[]`` packed into the ``bytea`` parameter ``name`` (see ``uuid_bytes``)."""
    return (
        f"ARRAY(SELECT encode(substring(%({name})s::bytea FROM g * 16 + 1 FOR 16), 'hex')::uuid"
        f" FROM generate_series(0, length(%({name})s::bytea) / 16 - 1) AS g)"
    )


ADMIT = f"""
WITH live AS (SELECT id, project_id FROM platforms WHERE id = ANY(%(platforms)s::uuid[]) FOR KEY SHARE)
SELECT true AS live, id, project_id FROM live
UNION ALL
SELECT false, id, NULL FROM trace_cancellations WHERE id = ANY({_uuids("ids")})
"""

RESOLVE = f"""
UPDATE dlq_index SET resolved_at = now()
WHERE trace_id = ANY({_uuids("ids")}) AND resolved_at IS NULL
"""

ALIAS_AND_RESOLVE = f"""
WITH aliased AS (
    INSERT INTO trace_aliases (id, project_id, platform_id, external_id)
    SELECT a.id, a.project_id, a.platform_id, a.external_id
    FROM unnest({_uuids("alias_ids")}, {_uuids("alias_projects")}, {_uuids("alias_platforms")},
                %(alias_externals)s::text[]) AS a(id, project_id, platform_id, external_id)
    JOIN projects p ON p.id = a.project_id
    ORDER BY a.id
    ON CONFLICT (id) DO NOTHING
)
{RESOLVE}
"""


def uuid_array(ids: Iterable[uuid.UUID]) -> str:
    """A PostgreSQL array literal of ``ids`` (``'{…,…}'``), for a ``%s::uuid[]`` parameter (few ids)."""
    return "{" + ",".join([str(i) for i in ids]) + "}"


def uuid_bytes(ids: Iterable[uuid.UUID]) -> bytes:
    """``ids`` packed 16 bytes each, for a ``bytea`` parameter read with ``_uuids``."""
    return b"".join([i.bytes for i in ids])
