"""API keys of a project, the seed's flow: create (name; all platforms or some) → the key shown
once, with a copy button → the masked list (scope, created, last used, a stale marker) → revoke
with confirmation.

The full key exists in one place only: the one-time slot of the operator's session, from the
create form's redirect until the page that shows it is rendered (``Cache-Control: no-store``).
A reload of that page says the key was shown already; it is never kept anywhere else.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from aiohttp import web

from console.app_helpers import flash, form_text, path_uuid, redirect, session_of
from console.context import DB_POOL, SETTINGS
from console.pages.forms import FormErrors, field_errors
from console.render import render
from shared import registry
from shared.registry import ManagementError

SHOWN_ONCE_SECONDS = 300  # a created key not shown within this long is dropped unseen


def scope_label(key: registry.ApiKey) -> str:
    if not key.restricted:
        return "All platforms"
    if not key.platforms:
        return "restricted, no platform left"
    return ", ".join(p.name for p in key.platforms)


def is_stale(key: registry.ApiKey, now: dt.datetime, days: int) -> bool:
    """Unused (or never used since it was created) for ``days`` days."""
    last = key.last_used_at or key.created_at
    return now - last >= dt.timedelta(days=days)


async def list_page(
    request: web.Request,
    *,
    values: dict[str, Any] | None = None,
    errors: FormErrors | None = None,
    status: int = 200,
) -> web.Response:
    project_id = path_uuid(request, "pid")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        platforms = await registry.list_platforms(conn, project_id)
        keys = await registry.list_keys(conn, project_id)
    now = dt.datetime.now(dt.UTC)
    days = request.app[SETTINGS].console_stale_key_days
    rows = [{"key": k, "scope": scope_label(k), "stale": is_stale(k, now, days)} for k in keys]
    return render(
        request,
        "keys.html",
        {
            "project": project,
            "platforms": platforms,
            "rows": rows,
            "stale_days": days,
            "values": values or {"name": "", "scope": "all", "platform_ids": []},
            "errors": errors or {},
            "section": "keys",
        },
        status=status,
    )


async def index(request: web.Request) -> web.Response:
    return await list_page(request)


async def create(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    form = await request.post()
    name = form_text(form, "name")
    scope = form_text(form, "scope") or "all"
    chosen = [v for v in form.getall("platform_ids", []) if isinstance(v, str)]
    values = {"name": name, "scope": scope, "platform_ids": chosen}
    if scope == "some" and not chosen:
        errors: FormErrors = {
            "platform_ids": ["Choose at least one platform, or give the key all platforms."]
        }
        return await list_page(request, values=values, errors=errors, status=400)
    try:
        platform_ids = [uuid.UUID(v) for v in chosen] if scope == "some" else []
    except ValueError:
        return await list_page(
            request, values=values, errors={"platform_ids": ["Unknown platform."]}, status=400
        )
    try:
        async with request.app[DB_POOL].connection() as conn:
            created = await registry.create_key(
                conn, request.app[SETTINGS].key_pepper, project_id, name, platform_ids
            )
    except ManagementError as err:
        if err.status == 404:
            raise
        return await list_page(
            request, values=values, errors=field_errors(err, {"name", "platform_ids"}), status=err.status
        )
    session = session_of(request)
    session.shown_once[str(created.id)] = (created, dt.datetime.now(dt.UTC))
    return redirect(f"/projects/{project_id}/keys/{created.id}/new")


async def shown_once(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    key_id = path_uuid(request, "kid")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
    held = session_of(request).shown_once.pop(str(key_id), None)
    created = None
    if isinstance(held, tuple):
        candidate, made_at = held
        fresh = dt.datetime.now(dt.UTC) - made_at < dt.timedelta(seconds=SHOWN_ONCE_SECONDS)
        if isinstance(candidate, registry.CreatedKey) and candidate.project_id == project_id and fresh:
            created = candidate
    scope = None
    if created is not None:
        scope = ", ".join(p.name for p in created.platforms) if created.restricted else "All platforms"
    response = render(
        request,
        "key_created.html",
        {"project": project, "created": created, "scope": scope, "section": "keys"},
    )
    response.headers["Cache-Control"] = "no-store"
    return response


async def confirm_revoke(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    key_id = path_uuid(request, "kid")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        keys = await registry.list_keys(conn, project_id)
    key = next((k for k in keys if k.id == key_id), None)
    if key is None:
        raise web.HTTPNotFound(
            text="This API key does not exist (any more): it may have been revoked already."
        )
    return render(
        request,
        "key_revoke.html",
        {"project": project, "key": key, "scope": scope_label(key), "section": "keys"},
    )


async def revoke(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    key_id = path_uuid(request, "kid")
    async with request.app[DB_POOL].connection() as conn:
        keys = await registry.list_keys(conn, project_id)
        key = next((k for k in keys if k.id == key_id), None)
        await registry.revoke_key(conn, key_id, project_id=project_id)
    name = key.name if key else str(key_id)
    flash(request, f"API key “{name}” revoked. The ingest API refuses it from now on.")
    return redirect(f"/projects/{project_id}/keys")


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/projects/{pid}/keys", index)
    router.add_post("/projects/{pid}/keys", create)
    router.add_get("/projects/{pid}/keys/{kid}/new", shown_once)
    router.add_get("/projects/{pid}/keys/{kid}/revoke", confirm_revoke)
    router.add_post("/projects/{pid}/keys/{kid}/revoke", revoke)
