"""Dead letters of a project: live counts (by reason, platform and key, with the oldest), the
filtered list with each record's detail and candidates, and for a selection a dry run (what the
router would decide now) and then the replay — ``router_worker.replay``'s ``plan`` and
``execute``, exactly what ``mibo-ingest dlq replay`` runs."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from aiohttp import web

from console import dead_letters
from console.app_helpers import path_uuid
from console.context import DB_POOL, SETTINGS
from console.render import render
from router_worker.replay import Candidate, execute, plan
from shared import registry
from shared.contracts.times import iso_utc
from shared.contracts.topics import Topics

MAX_SELECTION = 500


class Names:
    """Platform and key ids of the project → what people call them."""

    def __init__(self, platforms: list[registry.Platform], keys: list[registry.ApiKey]) -> None:
        self.platforms = {str(p.id): p.name for p in platforms}
        self.keys = {str(k.id): f"{k.name} ({k.masked})" for k in keys}

    def platform(self, value: object) -> str:
        if value is None or value == "-":
            return "no platform"
        return self.platforms.get(str(value), f"{value} (deleted)")

    def key(self, value: object) -> str:
        if value is None or value == "-":
            return "no key"
        return self.keys.get(str(value), f"{value} (revoked)")


async def _names(conn: Any, project_id: uuid.UUID) -> Names:
    return Names(await registry.list_platforms(conn, project_id), await registry.list_keys(conn, project_id))


def counts_json(counts: dead_letters.Counts, names: Names) -> dict[str, Any]:
    def rows(items: list[dead_letters.Count], label: Any) -> list[dict[str, Any]]:
        return [
            {
                "value": c.value,
                "label": label(c.value),
                "count": c.count,
                "oldest": iso_utc(c.oldest) if c.oldest else None,
            }
            for c in items
        ]

    return {
        "total": counts.total,
        "oldest": iso_utc(counts.oldest) if counts.oldest else None,
        "byReason": rows(counts.by_reason, str),
        "byPlatform": rows(counts.by_platform, names.platform),
        "byKey": rows(counts.by_key, names.key),
        "now": iso_utc(dt.datetime.now(dt.UTC)),
    }


async def index(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    filters = dead_letters.parse_filters(request.query)
    prefix = request.app[SETTINGS].kafka_topic_prefix
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        platforms = await registry.list_platforms(conn, project_id)
        keys = await registry.list_keys(conn, project_id)
        names = Names(platforms, keys)
        letters = await dead_letters.list_letters(conn, project_id, prefix, filters)
        counts = await dead_letters.count_letters(conn, project_id, prefix, filters)
    return render(
        request,
        "dead_letters.html",
        {
            "project": project,
            "platforms": platforms,
            "keys": keys,
            "names": names,
            "letters": letters,
            "counts": counts,
            "counts_json": counts_json(counts, names),
            "filters": filters,
            "reasons": dead_letters.REASONS,
            "states": dead_letters.STATES,
            "newer_than": list(dead_letters.NEWER_THAN),
            "limit": dead_letters.LIST_LIMIT,
            "now": dt.datetime.now(dt.UTC),
            "section": "dead_letters",
        },
    )


async def counts(request: web.Request) -> web.Response:
    """The counts as JSON, for the page's live update (polled every few seconds)."""
    project_id = path_uuid(request, "pid")
    filters = dead_letters.parse_filters(request.query)
    prefix = request.app[SETTINGS].kafka_topic_prefix
    async with request.app[DB_POOL].connection() as conn:
        await registry.get_project(conn, project_id)
        names = await _names(conn, project_id)
        found = await dead_letters.count_letters(conn, project_id, prefix, filters)
    return web.json_response(counts_json(found, names), headers={"Cache-Control": "no-store"})


async def _selection(
    request: web.Request, project_id: uuid.UUID
) -> tuple[list[Candidate], Names, registry.Project]:
    """The selected records (by DLQ position) of this project, as ``plan`` sees them now."""
    form = await request.post()
    topic = Topics.with_prefix(request.app[SETTINGS].kafka_topic_prefix).dlq
    chosen = {v for v in form.getall("source", []) if isinstance(v, str) and v.startswith(f"{topic}/")}
    if not chosen:
        raise web.HTTPBadRequest(
            text="Select at least one dead letter (the boxes in the list), then try again."
        )
    if len(chosen) > MAX_SELECTION:
        raise web.HTTPBadRequest(text=f"Select at most {MAX_SELECTION} dead letters at once.")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        names = await _names(conn, project_id)
    candidates = await plan(
        request.app[SETTINGS], lambda e: e.source in chosen and e.project_id == project_id
    )
    return candidates, names, project


async def dry_run(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    candidates, names, project = await _selection(request, project_id)
    return render(
        request,
        "dead_letters_plan.html",
        {
            "project": project,
            "candidates": candidates,
            "names": names,
            "fresh": sum(1 for c in candidates if not c.already_replayed),
            "done": None,
            "section": "dead_letters",
        },
    )


async def replay(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    candidates, names, project = await _selection(request, project_id)
    replayed = await execute(request.app[SETTINGS], candidates)
    return render(
        request,
        "dead_letters_plan.html",
        {
            "project": project,
            "candidates": candidates,
            "names": names,
            "fresh": replayed,
            "done": {"replayed": replayed, "skipped": len(candidates) - replayed},
            "section": "dead_letters",
        },
    )


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/projects/{pid}/dead-letters", index)
    router.add_get("/projects/{pid}/dead-letters/counts.json", counts)
    router.add_post("/projects/{pid}/dead-letters/dry-run", dry_run)
    router.add_post("/projects/{pid}/dead-letters/replay", replay)
