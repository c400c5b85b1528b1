"""``mibo-ingest projects create | list | rename | delete``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec
import psycopg

from shared import registry
from shared.ops.cli.common import add_json_flag, command, emit, run, table, when
from shared.registry import Project
from shared.runtime.settings import Settings

# --------------------------------------------------------------------------------------------------
# projects


@command
def create(args: argparse.Namespace) -> int:
    project = run(lambda conn, _: registry.create_project(conn, args.name))
    emit(args, project, lambda: f'created project "{project.name}" ({project.id})')
    return 0


@command
def list_(args: argparse.Namespace) -> int:
    projects = run(lambda conn, _: registry.list_projects(conn))
    emit(args, projects, lambda: _projects_table(projects))
    return 0


def _projects_table(projects: list[Project]) -> str:
    rows = [(str(p.id), p.name, when(p.created_at)) for p in projects]
    return table(("ID", "NAME", "CREATED"), rows, "no projects yet (mibo-ingest projects create NAME)")


@command
def rename(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], _: Settings) -> Project:
        project = await registry.resolve_project(conn, args.project)
        return await registry.rename_project(conn, project.id, args.new_name)

    project = run(action)
    emit(args, project, lambda: f'renamed project {project.id} to "{project.name}"')
    return 0


@command
def delete(args: argparse.Namespace) -> int:
    """Deleting a project takes its platforms, keys and stored traces along: without ``--yes``
    this only says what would go."""

    async def action(
        conn: psycopg.AsyncConnection[Any], _: Settings
    ) -> tuple[Project, registry.ProjectContents]:
        project = await registry.resolve_project(conn, args.project)
        contents = await registry.project_contents(conn, project.id)
        if args.yes:
            await registry.delete_project(conn, project.id)
        return project, contents

    project, contents = run(action)
    what = f"{contents.platforms} platform(s), {contents.keys} API key(s) and {contents.traces} trace(s)"
    if not args.yes:
        print(
            f'project "{project.name}" ({project.id}) has {what}; deleting it deletes them all.\n'
            "Run again with --yes to delete it.",
            file=sys.stderr,
        )
        return 1
    emit(
        args,
        {"id": project.id, "deleted": True, **msgspec.structs.asdict(contents)},
        lambda: f'deleted project "{project.name}" ({project.id}) with {what}',
    )
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("projects", help="projects: create, list, rename, delete")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = add_json_flag(sub.add_parser("create", help="create a project"))
    p.add_argument("name", help="the project's name (unique)")
    p.set_defaults(handler=create)

    add_json_flag(sub.add_parser("list", help="list projects")).set_defaults(handler=list_)

    p = add_json_flag(sub.add_parser("rename", help="rename a project"))
    p.add_argument("project", help="project id or name")
    p.add_argument("new_name")
    p.set_defaults(handler=rename)

    p = add_json_flag(
        sub.add_parser("delete", help="delete a project with its platforms, API keys and traces")
    )
    p.add_argument("project", help="project id or name")
    p.add_argument("--yes", action="store_true", help="really delete (without it: show what would go)")
    p.set_defaults(handler=delete)
