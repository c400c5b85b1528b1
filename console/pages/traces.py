"""Trace lookup: by trace id or external id, the receipts ``mibo-ingest trace`` prints (stored with
its platform and a payload viewer, dead-lettered with why, or not known yet), and the recent
traces of a platform (the listing ``GET /public/traces`` pages through, with an operator's reach).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from aiohttp import web

from console.app_helpers import path_uuid
from console.context import DB_POOL
from console.render import render
from ingest_api.endpoints.trace_list import SELECT_PAGE, summary
from ingest_api.endpoints.trace_read import Stored, find_receipt, operator_params, trace_data
from shared import registry
from shared.ops.cli.trace import lookup
from shared.registry.validation import has_control_characters

RECENT = 20
PAYLOAD_SHOWN_BYTES = 256 * 1024  # the viewer shows this much of a payload; the rest is elided
MAX_REF_LENGTH = 400


def check_ref(ref: str) -> str:
    """'' when ``ref`` can be looked up, else why not (said next to the field)."""
    if len(ref) > MAX_REF_LENGTH:
        return f"An id is at most {MAX_REF_LENGTH} characters."
    if has_control_characters(ref):
        return "An id has no control characters (such as \\u0000)."
    return ""


def pretty(raw: msgspec.Raw | None) -> tuple[str, bool]:
    """A JSON document indented for reading, and whether it was cut to ``PAYLOAD_SHOWN_BYTES``."""
    if raw is None:
        return "null", False
    text = msgspec.json.format(bytes(raw), indent=2).decode()
    if len(text) > PAYLOAD_SHOWN_BYTES:
        return text[:PAYLOAD_SHOWN_BYTES], True
    return text, False


async def _payloads(conn: Any, project_id: uuid.UUID, receipts: list[dict[str, Any]]) -> None:
    """Add each stored receipt's payload and metadata, pretty-printed, for the viewer."""
    for receipt in receipts:
        if receipt["status"] != "stored":
            continue
        found = await find_receipt(conn, uuid.UUID(receipt["id"]), operator_params(project_id))
        if isinstance(found, Stored):
            data = trace_data(found.row)
            receipt["payloadText"], receipt["payloadCut"] = pretty(data["payload"])
            receipt["metadataText"], _ = pretty(data["metadata"])


async def page(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    ref = request.query.get("ref", "").strip()
    platform_ref = request.query.get("platform", "")
    error = check_ref(ref) if ref else ""
    receipts: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    chosen = None
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        platforms = await registry.list_platforms(conn, project_id)
        if ref and not error:
            receipts, _names = await lookup(conn, project_id, ref)
            await _payloads(conn, project_id, receipts)
        chosen = next((p for p in platforms if str(p.id) == platform_ref), None)
        if chosen is not None:
            params = {
                **operator_params(project_id),
                "platform_id": chosen.id,
                "after_at": None,
                "after_id": None,
                "limit": RECENT,
            }
            cur = await conn.execute(SELECT_PAGE, params)
            recent = [summary(row) for row in await cur.fetchall()]
    names = {str(p.id): p.name for p in platforms}
    return render(
        request,
        "traces.html",
        {
            "project": project,
            "platforms": platforms,
            "names": names,
            "ref": ref,
            "error": error,
            "receipts": receipts,
            "looked_up": bool(ref) and not error,
            "chosen": chosen,
            "recent": recent,
            "section": "traces",
        },
        status=400 if error else 200,
    )


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/projects/{pid}/traces", page)
