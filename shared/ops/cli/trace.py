"""``mibo-ingest trace <id | external id> --project P``: what became of a trace, for operators.

The receipt ``GET /public/traces/{id}`` gives a sender (``ingest_api.endpoints.trace_read``: the
same lookup, the same dead-letter shape), seen with the whole project's reach and with platform
names: stored, dead-lettered (reason, stage, detail, candidates, when, attempt) or unknown. Every
receipt also lists the dead-letter history of the id (dead-lettered, then resolved by a replay).

The reference is a trace id (any id a 202 answered), or an external id (``x-request-id``, or
``otlp:<trace id>``): every trace of the project with that external id gets a receipt — one per
platform that stored it, and one per version that was dead-lettered and not stored since. A UUID is
looked up both ways (clients may send UUIDs as ``x-request-id``).

Exit status: 0 when at least one receipt says stored or dead-lettered, 1 when nothing is known
(the trace may still be queued), like ``grep``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg

from shared import registry
from shared.contracts.times import iso_utc
from shared.ops.cli.common import add_json_flag, add_project_option, command, or_dash
from shared.registry.validation import as_uuid
from shared.runtime.settings import Settings, libpq_url

if TYPE_CHECKING:  # imported when a receipt is looked up: the rest of the CLI starts without aiohttp
    from ingest_api.endpoints.trace_read import LetterRow

SELECT_SUMMARY = """
SELECT t.id, t.platform_id, t.external_id, t.body_shape, t.received_at, t.stored_at, t.updated_at,
       t.api_key_id, octet_length(t.payload::text)
"""
# The stored receipt without the payload (an operator's terminal is no place for 10 MiB): its
# size. Completed by trace_read.FIND_TRACE, the API's own WHERE.

BY_EXTERNAL_ID = """
SELECT id FROM traces WHERE project_id = %(project_id)s AND external_id = %(ref)s
UNION
SELECT trace_id FROM dlq_index
WHERE project_id = %(project_id)s AND external_id = %(ref)s AND trace_id IS NOT NULL AND resolved_at IS NULL
"""

HISTORY = """
SELECT reason, stage, failed_at, attempt, resolved_at, topic, "partition", "offset"
FROM dlq_index WHERE project_id = %s AND trace_id = %s
ORDER BY attempt, failed_at NULLS FIRST, "offset"
"""


class Names:
    """Platform ids of the project → ``name (id)`` for people, ``name`` for JSON."""

    def __init__(self, platforms: list[registry.Platform]) -> None:
        self._by_id = {str(p.id): p.name for p in platforms}

    def name(self, platform_id: object) -> str | None:
        return None if platform_id is None else self._by_id.get(str(platform_id))

    def label(self, platform_id: object) -> str:
        if platform_id is None:
            return "-"
        name = self.name(platform_id)
        return f"{name} ({platform_id})" if name else f"{platform_id} (deleted)"


def _time(moment: dt.datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment)


def _history(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [
        {
            "reason": reason,
            "stage": stage,
            "failedAt": _time(failed),
            "attempt": attempt,
            "resolvedAt": _time(resolved),
            "dlqRecord": f"{topic}/{partition}/{offset}",
        }
        for reason, stage, failed, attempt, resolved, topic, partition, offset in rows
    ]


def stored_receipt(row: tuple[Any, ...], requested: uuid.UUID, names: Names) -> dict[str, Any]:
    """A stored trace's receipt: the API's fields less the payload, with names and the key."""
    trace_id, platform_id, external_id, shape, received, stored, updated, key_id, size = row
    return {
        "id": str(trace_id),
        "status": "stored",
        "requestedId": str(requested),
        "platformId": str(platform_id),
        "platformName": names.name(platform_id),
        "externalId": external_id,
        "bodyShape": shape,
        "apiKeyId": None if key_id is None else str(key_id),
        "payloadBytes": size,
        "receivedAt": _time(received),
        "createdAt": _time(stored),
        "updatedAt": _time(updated),
    }


def letter_receipt(letter: LetterRow, names: Names) -> dict[str, Any]:
    """A dead-lettered trace's receipt: the API's (with an operator's reach), with names."""
    from ingest_api.endpoints.trace_read import dead_lettered

    out: dict[str, Any] = msgspec.to_builtins(dead_lettered(letter, None))
    out["requestedId"] = out["id"]
    out["platformName"] = names.name(letter.platform_id)
    out["deadLetter"]["candidateNames"] = [names.name(c) for c in letter.candidates]
    return out


def unknown_receipt(requested: uuid.UUID) -> dict[str, Any]:
    return {"id": str(requested), "status": "unknown", "requestedId": str(requested)}


def human(receipt: dict[str, Any], names: Names) -> str:
    """One receipt as lines for a terminal."""
    status = receipt["status"]
    head = f"trace {receipt['id']}  {status.replace('_', '-')}"
    if receipt["requestedId"] != receipt["id"]:
        head += f"  (looked up as {receipt['requestedId']}: an earlier version or an OTLP export)"
    if status == "unknown":
        return head + "\n  not stored and not dead-lettered in this project (yet): it may still be queued"
    lines = [head]

    def add(label: str, value: object) -> None:
        lines.append(f"  {label:<13}{value}")

    add("platform", names.label(receipt["platformId"]))
    add("external id", or_dash(receipt["externalId"]))
    if status == "stored":
        add("body", f"{receipt['bodyShape']}, {receipt['payloadBytes']} bytes")
        add("api key", or_dash(receipt["apiKeyId"]))
        add("received", receipt["receivedAt"])
        add("stored", f"{receipt['createdAt']} (updated {receipt['updatedAt']})")
    else:
        letter = receipt["deadLetter"]
        add("received", or_dash(receipt["receivedAt"]))
        add("reason", f"{letter['reason']} (stage {letter['stage']}, attempt {letter['attempt']})")
        add("failed at", or_dash(letter["failedAt"]))
        add("detail", letter["detail"])
        if letter["candidates"]:
            add("candidates", ", ".join(names.label(c) for c in letter["candidates"]))
    for entry in receipt.get("deadLetters", []):
        resolved = f", resolved {entry['resolvedAt']}" if entry["resolvedAt"] else ""
        add(
            "dead letter",
            f"{or_dash(entry['failedAt'])} {entry['reason']} (stage {entry['stage']}, attempt "
            f"{entry['attempt']}, {entry['dlqRecord']}){resolved}",
        )
    return "\n".join(lines)


async def lookup(
    conn: psycopg.AsyncConnection[Any], project_id: uuid.UUID, ref: str
) -> tuple[list[dict[str, Any]], Names]:
    """The receipts of ``ref`` (a trace id and/or an external id) in the project, each once, and
    the names of the project's platforms."""
    from ingest_api.endpoints.trace_read import FIND_TRACE, LetterRow, Stored, find_receipt, operator_params

    names = Names(await registry.list_platforms(conn, project_id))
    wanted: list[uuid.UUID] = []
    ref_id = as_uuid(ref)
    if ref_id is not None:
        wanted.append(ref_id)
    cur = await conn.execute(BY_EXTERNAL_ID, {"project_id": project_id, "ref": ref})
    wanted += sorted({found for (found,) in await cur.fetchall()} - set(wanted))
    params = operator_params(project_id)
    receipts: dict[tuple[str, str], dict[str, Any]] = {}
    for trace_id in wanted:
        found = await find_receipt(conn, trace_id, params, SELECT_SUMMARY + FIND_TRACE)
        if isinstance(found, Stored):
            receipt = stored_receipt(found.row, trace_id, names)
        elif isinstance(found, LetterRow):
            receipt = letter_receipt(found, names)
        elif trace_id == ref_id:
            receipt = unknown_receipt(trace_id)
        else:
            continue
        cur = await conn.execute(HISTORY, (project_id, trace_id))
        receipt["deadLetters"] = _history(await cur.fetchall())
        receipts.setdefault((receipt["status"], receipt["id"]), receipt)
    return list(receipts.values()), names


@command
def trace(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (after `mibo-ingest dev up`: . .devstack/env)")

    async def action() -> tuple[list[dict[str, Any]], Names]:
        async with await psycopg.AsyncConnection.connect(
            libpq_url(settings.database_url), autocommit=True
        ) as conn:
            project = await registry.resolve_project(conn, args.project)
            return await lookup(conn, project.id, args.ref)

    receipts, names = asyncio.run(action())
    if args.json:
        print(msgspec.json.encode(receipts).decode())
    elif receipts:
        print("\n\n".join(human(r, names) for r in receipts))
    known = any(r["status"] != "unknown" for r in receipts)
    if not known and not receipts:
        print(f"error: no trace with id or external id {args.ref!r} in this project", file=sys.stderr)
    return 0 if known else 1


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = groups.add_parser(
        "trace",
        help="what became of a trace: stored, dead-lettered (why, when) or unknown",
        description="Receipts of a trace id, or of every trace of the project with an external id.",
    )
    p.add_argument(
        "ref", metavar="ID", help="a trace id (any id a 202 answered) or an external id (x-request-id)"
    )
    add_project_option(p)
    add_json_flag(p)
    p.set_defaults(handler=trace)
