"""The dead-letter index (``dlq_index``, kept by the storage worker) as an operator's page reads
it: counts by reason, platform and key with the oldest entry of each, and the filtered list.

The filters are ``mibo-ingest dlq``'s own (``shared.ops.cli.dlq.index_filters``), so the console
and the CLI select the same records. An entry is *open* until it is replayed (``dlq_replays``) or
its trace is stored after all (``resolved_at``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import uuid
from typing import Any

import msgspec
import psycopg

from shared.contracts.topics import Topics
from shared.ops.cli.dlq import index_filters

STATES = ("open", "replayed", "resolved", "all")
NEWER_THAN = {
    "15m": dt.timedelta(minutes=15),
    "1h": dt.timedelta(hours=1),
    "24h": dt.timedelta(days=1),
    "7d": dt.timedelta(days=7),
}
LIST_LIMIT = 200

REASONS = {
    "platform_ambiguous": "More than one platform of the project could take this trace, and nothing in it "
    "says which. Set the workflow id, chatflow id or OTLP service name the trace carries on the platform "
    "it belongs to, then dry-run and replay.",
    "platform_not_found": "The trace names a platform (platformId) that does not exist in the project. "
    "Create it, or have the sender fix the id.",
    "platform_not_allowed": "The trace names (or its hints match) a platform outside its API key's scope. "
    "Widen the key's scope, or send with a key that may use that platform.",
    "platform_unresolved": "No platform could be chosen (the project has none in the key's scope), or the "
    "platform was deleted before the trace was stored. Create or restore the platform, then replay.",
    "invalid_envelope": "The record could not be read at all; replaying it will not help.",
    "storage_rejected": "PostgreSQL refused to store the trace (for example a \\u0000 inside a JSON string). "
    "The sender must fix the body; replaying it will be refused again.",
}


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """What the page's filter form asks for (``None``/empty: no filter)."""

    reason: str = ""
    platform: str = ""
    key: str = ""
    newer_than: str = ""  # a key of NEWER_THAN
    state: str = "open"

    def args(self, project_id: uuid.UUID) -> argparse.Namespace:
        """As the CLI's options (``index_filters`` reads them)."""
        return argparse.Namespace(
            reason=[self.reason] if self.reason else None,
            key_id=self.key or None,
            project=str(project_id),
            platform=self.platform or None,
            newer_than=NEWER_THAN.get(self.newer_than),
            older_than=None,
        )


def parse_filters(query: Any) -> Filters:
    """The filter form's query string; unknown values are ignored (no filter), never an error."""

    def text(name: str) -> str:
        value = query.get(name, "")
        return value if isinstance(value, str) and len(value) <= 200 and value.isprintable() else ""

    state = text("state")
    newer = text("newer_than")
    return Filters(
        reason=text("reason"),
        platform=text("platform"),
        key=text("key"),
        newer_than=newer if newer in NEWER_THAN else "",
        state=state if state in STATES else "open",
    )


_STATE_SQL = {
    "open": "d.resolved_at IS NULL AND r.topic IS NULL",
    "replayed": "d.resolved_at IS NULL AND r.topic IS NOT NULL",
    "resolved": "d.resolved_at IS NOT NULL",
    "all": "TRUE",
}


class Letter(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # topic/partition/offset: what dry run and replay select
    trace_id: uuid.UUID | None
    external_id: str | None
    key_id: uuid.UUID | None
    platform_id: uuid.UUID | None
    reason: str
    stage: str
    detail: str
    candidates: list[str]
    failed_at: dt.datetime | None
    received_at: dt.datetime | None
    attempt: int
    resolved_at: dt.datetime | None
    replayed_at: dt.datetime | None

    @property
    def state(self) -> str:
        if self.resolved_at is not None:
            return "resolved"
        return "replayed" if self.replayed_at is not None else "open"


def _base(filters: Filters, project_id: uuid.UUID, topic: str) -> tuple[str, dict[str, Any]]:
    where, params = index_filters(filters.args(project_id), topic)
    sql = f"""(SELECT * FROM dlq_index WHERE {where}) d
LEFT JOIN dlq_replays r ON r.topic = d.topic AND r.partition = d.partition AND r."offset" = d."offset"
WHERE {_STATE_SQL[filters.state]}"""
    return sql, params


async def list_letters(
    conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, prefix: str, filters: Filters
) -> list[Letter]:
    base, params = _base(filters, project_id, Topics.with_prefix(prefix).dlq)
    cur = await conn.execute(
        f"""SELECT d.topic || '/' || d.partition || '/' || d."offset", d.trace_id, d.external_id,
                   d.api_key_id, d.platform_id, d.reason, d.stage, d.detail, d.candidates, d.failed_at,
                   d.received_at, d.attempt, d.resolved_at, r.replayed_at
            FROM {base}
            ORDER BY d.failed_at DESC NULLS LAST, d."offset" DESC
            LIMIT {LIST_LIMIT}""",
        params,
    )
    names = Letter.__struct_fields__
    return [Letter(**dict(zip(names, row, strict=True))) for row in await cur.fetchall()]


class Count(msgspec.Struct, frozen=True):
    value: str  # a reason, a platform id or a key id ('-': none)
    count: int
    oldest: dt.datetime | None


class Counts(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    oldest: dt.datetime | None
    by_reason: list[Count]
    by_platform: list[Count]
    by_key: list[Count]


async def count_letters(
    conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, prefix: str, filters: Filters
) -> Counts:
    """Counts (and the oldest failure) by reason, platform and key, of the entries ``filters``
    selects — open ones, unless the filter says otherwise."""
    base, params = _base(filters, project_id, Topics.with_prefix(prefix).dlq)
    cur = await conn.execute(
        f"""SELECT CASE WHEN grouping(reason) = 0 THEN 'reason' WHEN grouping(k) = 0 THEN 'key'
                        WHEN grouping(p) = 0 THEN 'platform' ELSE 'total' END,
                   coalesce(reason, k, p, ''), count(*), min(failed_at)
            FROM (SELECT d.reason, coalesce(d.api_key_id::text, '-') AS k,
                         coalesce(d.platform_id::text, '-') AS p, d.failed_at
                  FROM {base}) AS e
            GROUP BY GROUPING SETS ((reason), (k), (p), ())""",
        params,
    )
    groups: dict[str, list[Count]] = {"reason": [], "key": [], "platform": []}
    total, oldest = 0, None
    for group, value, n, first in await cur.fetchall():
        if group == "total":
            total, oldest = n, first
        else:
            groups[group].append(Count(value, n, first))
    for counts in groups.values():
        counts.sort(key=lambda c: (-c.count, c.value))
    return Counts(
        total=total,
        oldest=oldest,
        by_reason=groups["reason"],
        by_platform=groups["platform"],
        by_key=groups["key"],
    )
