"""Platforms of a project: list, create, edit (name and routing ids), delete with confirmation.

Fields left empty mean "none" (an identifier is cleared). ``shared.registry`` decides; its
validation and conflict messages (the admin API's) are shown next to the field they name.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from console.app_helpers import flash, form_text, path_uuid, redirect
from console.context import DB_POOL
from console.pages.forms import FormErrors, field_errors
from console.render import render
from shared import registry
from shared.registry import PLATFORM_TYPES, ManagementError

FIELDS = {"name", "type", "workflow_id", "chatflow_id", "otlp_service_name"}
TYPE_LABELS = {"n8n": "n8n", "flowise": "Flowise", "http_api": "HTTP API", "custom": "Custom"}


def _optional(form: Any, name: str) -> str | None:
    value = form_text(form, name)
    return value if value != "" else None


async def list_page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: FormErrors | None = None,
    status: int = 200,
) -> web.Response:
    project_id = path_uuid(request, "pid")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        platforms = await registry.list_platforms(conn, project_id)
    return render(
        request,
        "platforms.html",
        {
            "project": project,
            "platforms": platforms,
            "types": PLATFORM_TYPES,
            "type_labels": TYPE_LABELS,
            "values": values or {"type": "n8n"},
            "errors": errors or {},
            "section": "platforms",
        },
        status=status,
    )


async def index(request: web.Request) -> web.Response:
    return await list_page(request)


async def create(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    form = await request.post()
    values = {name: form_text(form, name) for name in FIELDS}
    try:
        async with request.app[DB_POOL].connection() as conn:
            platform = await registry.create_platform(
                conn,
                project_id,
                values["name"],
                values["type"],
                workflow_id=_optional(form, "workflow_id") if values["type"] == "n8n" else None,
                chatflow_id=_optional(form, "chatflow_id") if values["type"] == "flowise" else None,
                otlp_service_name=_optional(form, "otlp_service_name"),
            )
    except ManagementError as err:
        if err.status == 404:
            raise
        return await list_page(request, values=values, errors=field_errors(err, FIELDS), status=err.status)
    flash(request, f"Platform “{platform.name}” created.")
    return redirect(f"/projects/{project_id}/platforms")


async def edit_page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: FormErrors | None = None,
    status: int = 200,
) -> web.Response:
    project_id = path_uuid(request, "pid")
    platform_id = path_uuid(request, "id")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        platform = await registry.get_platform(conn, project_id, platform_id)
    current = {
        "name": platform.name,
        "workflow_id": platform.workflow_id or "",
        "chatflow_id": platform.chatflow_id or "",
        "otlp_service_name": platform.otlp_service_name or "",
    }
    return render(
        request,
        "platform_edit.html",
        {
            "project": project,
            "platform": platform,
            "type_labels": TYPE_LABELS,
            "values": values or current,
            "errors": errors or {},
            "section": "platforms",
        },
        status=status,
    )


async def edit(request: web.Request) -> web.Response:
    return await edit_page(request)


async def update(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    platform_id = path_uuid(request, "id")
    form = await request.post()
    values = {name: form_text(form, name) for name in FIELDS}
    try:
        async with request.app[DB_POOL].connection() as conn:
            current = await registry.get_platform(conn, project_id, platform_id)
            platform = await registry.update_platform(
                conn,
                project_id,
                platform_id,
                name=values["name"],
                workflow_id=_optional(form, "workflow_id") if current.type == "n8n" else None,
                chatflow_id=_optional(form, "chatflow_id") if current.type == "flowise" else None,
                otlp_service_name=_optional(form, "otlp_service_name"),
            )
    except ManagementError as err:
        if err.status == 404:
            raise
        return await edit_page(request, values=values, errors=field_errors(err, FIELDS), status=err.status)
    flash(request, f"Platform “{platform.name}” saved.")
    return redirect(f"/projects/{project_id}/platforms")


async def keys_restricted_to(request: web.Request, platform: registry.Platform) -> list[registry.ApiKey]:
    async with request.app[DB_POOL].connection() as conn:
        keys = await registry.list_keys(conn, platform.project_id)
    return [k for k in keys if platform.id in k.platform_ids]


async def confirm_delete(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    platform_id = path_uuid(request, "id")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        platform = await registry.get_platform(conn, project_id, platform_id)
        cur = await conn.execute(
            "SELECT count(*) FROM traces WHERE project_id = %s AND platform_id = %s",
            (project_id, platform_id),
        )
        row = await cur.fetchone()
    keys = await keys_restricted_to(request, platform)
    return render(
        request,
        "platform_delete.html",
        {
            "project": project,
            "platform": platform,
            "keys": keys,
            "traces": row[0] if row else 0,
            "type_labels": TYPE_LABELS,
            "section": "platforms",
        },
    )


async def delete(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    platform_id = path_uuid(request, "id")
    async with request.app[DB_POOL].connection() as conn:
        platform = await registry.get_platform(conn, project_id, platform_id)
        await registry.delete_platform(conn, project_id, platform_id)
    flash(request, f"Platform “{platform.name}” deleted.")
    return redirect(f"/projects/{project_id}/platforms")


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/projects/{pid}/platforms", index)
    router.add_post("/projects/{pid}/platforms", create)
    router.add_get("/projects/{pid}/platforms/{id}", edit)
    router.add_post("/projects/{pid}/platforms/{id}", update)
    router.add_get("/projects/{pid}/platforms/{id}/delete", confirm_delete)
    router.add_post("/projects/{pid}/platforms/{id}/delete", delete)
