"""Projects: the list (with what each holds), create, rename, and delete with a typed confirmation
that says what goes with the project. Every rule is ``shared.registry``'s."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from console.app_helpers import flash, form_text, path_uuid, redirect
from console.context import DB_POOL
from console.pages.forms import field_errors
from console.render import render
from shared import registry
from shared.registry import ManagementError


async def project_or_404(request: web.Request, project_id: uuid.UUID) -> registry.Project:
    async with request.app[DB_POOL].connection() as conn:
        return await registry.get_project(conn, project_id)  # NotFound: the 404 page


async def list_page(
    request: web.Request, *, name: str = "", errors: dict[str, list[str]] | None = None, status: int = 200
) -> web.Response:
    rows: list[dict[str, Any]] = []
    async with request.app[DB_POOL].connection() as conn:
        for project in await registry.list_projects(conn):
            contents = await registry.project_contents(conn, project.id)
            rows.append({"project": project, "contents": contents})
    return render(
        request, "projects.html", {"rows": rows, "name": name, "errors": errors or {}}, status=status
    )


async def index(request: web.Request) -> web.Response:
    return await list_page(request)


async def create(request: web.Request) -> web.Response:
    form = await request.post()
    name = form_text(form, "name")
    try:
        async with request.app[DB_POOL].connection() as conn:
            project = await registry.create_project(conn, name)
    except ManagementError as err:
        return await list_page(request, name=name, errors=field_errors(err, {"name"}), status=err.status)
    flash(request, f"Project “{project.name}” created. Next: add its platforms.")
    return redirect(f"/projects/{project.id}/platforms")


async def overview(
    request: web.Request,
    *,
    name: str | None = None,
    errors: dict[str, list[str]] | None = None,
    status: int = 200,
) -> web.Response:
    project_id = path_uuid(request, "pid")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        contents = await registry.project_contents(conn, project_id)
    return render(
        request,
        "project.html",
        {
            "project": project,
            "contents": contents,
            "name": project.name if name is None else name,
            "errors": errors or {},
            "section": "overview",
        },
        status=status,
    )


async def show(request: web.Request) -> web.Response:
    return await overview(request)


async def rename(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    form = await request.post()
    name = form_text(form, "name")
    try:
        async with request.app[DB_POOL].connection() as conn:
            project = await registry.rename_project(conn, project_id, name)
    except ManagementError as err:
        if err.status == 404:
            raise
        return await overview(request, name=name, errors=field_errors(err, {"name"}), status=err.status)
    flash(request, f"Project renamed to “{project.name}”.")
    return redirect(f"/projects/{project_id}")


async def confirm_delete(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    project_id = path_uuid(request, "pid")
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        contents = await registry.project_contents(conn, project_id)
    return render(
        request,
        "project_delete.html",
        {"project": project, "contents": contents, "error": error, "section": "overview"},
        status=status,
    )


async def confirm_page(request: web.Request) -> web.Response:
    return await confirm_delete(request)


async def delete(request: web.Request) -> web.Response:
    project_id = path_uuid(request, "pid")
    form = await request.post()
    async with request.app[DB_POOL].connection() as conn:
        project = await registry.get_project(conn, project_id)
        if form_text(form, "confirm_name") != project.name:
            return await confirm_delete(
                request, error="Type the project's name exactly to confirm.", status=400
            )
        await registry.delete_project(conn, project_id)
    flash(request, f"Project “{project.name}” deleted, with its platforms, API keys and stored traces.")
    return redirect("/projects")


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/projects", index)
    router.add_post("/projects", create)
    router.add_get("/projects/{pid}", show)
    router.add_post("/projects/{pid}/rename", rename)
    router.add_get("/projects/{pid}/delete", confirm_page)
    router.add_post("/projects/{pid}/delete", delete)
