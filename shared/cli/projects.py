"""``mibo-ingest projects create | list | rename | delete``.

This module also holds the plumbing the ``platforms`` and ``keys`` groups share: settings, one
database connection per command, the dev-pepper warning, ``--json`` and human tables, and turning
a refused operation into a message on stderr with exit code 1 (argparse uses 2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import psycopg

from shared import management
from shared.management import ManagementError, Project
from shared.settings import Settings, libpq_url

T = TypeVar("T")
Action = Callable[[psycopg.AsyncConnection[Any], Settings], Awaitable[T]]

DEV_PEPPER_WARNING = """\
!!! WARNING: KEY_PEPPER is the built-in development value.
!!! API key hashes made with it are only as secret as this project's source code, and keys created
!!! now stop working once a real pepper is set. Set KEY_PEPPER to a long random secret in production.
"""


# --------------------------------------------------------------------------------------------------
# Shared by the projects, platforms and keys groups


def run(action: Action[T]) -> T:
    """Run ``action`` with the settings and one autocommit connection to DATABASE_URL."""
    settings = Settings.from_env()
    if settings.uses_dev_pepper:
        print(DEV_PEPPER_WARNING, file=sys.stderr, end="")
    if not settings.key_pepper:
        raise SystemExit("KEY_PEPPER is set but empty: give it a long random secret (or unset it in dev)")
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (after `mibo-ingest dev up`: . .devstack/env)")
    return asyncio.run(_with_connection(settings, action))


async def _with_connection(settings: Settings, action: Action[T]) -> T:
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        return await action(conn, settings)


def command(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A subcommand's handler: refusals and an unreachable database become one line on stderr."""

    def handle(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ManagementError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return 1
        except psycopg.OperationalError as exc:
            print(f"error: cannot reach the database: {str(exc).strip()}", file=sys.stderr)
            return 1

    return handle


def add_json_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    return parser


def add_project_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", "-p", required=True, metavar="PROJECT", help="project id or name")


def emit(args: argparse.Namespace, value: Any, human: Callable[[], str]) -> None:
    """``--json``: the value as JSON; otherwise what ``human()`` writes."""
    if args.json:
        print(msgspec.json.encode(value).decode())
    else:
        print(human())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """A plain left-aligned text table, or ``empty`` when there is nothing to show."""
    if not rows:
        return empty
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def when(moment: dt.datetime | None, missing: str = "never") -> str:
    if moment is None:
        return missing
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def or_dash(value: str | None) -> str:
    return "-" if value is None else value


# --------------------------------------------------------------------------------------------------
# projects


@command
def create(args: argparse.Namespace) -> int:
    project = run(lambda conn, _: management.create_project(conn, args.name))
    emit(args, project, lambda: f'created project "{project.name}" ({project.id})')
    return 0


@command
def list_(args: argparse.Namespace) -> int:
    projects = run(lambda conn, _: management.list_projects(conn))
    emit(args, projects, lambda: _projects_table(projects))
    return 0


def _projects_table(projects: list[Project]) -> str:
    rows = [(str(p.id), p.name, when(p.created_at)) for p in projects]
    return table(("ID", "NAME", "CREATED"), rows, "no projects yet (mibo-ingest projects create NAME)")


@command
def rename(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], _: Settings) -> Project:
        project = await management.resolve_project(conn, args.project)
        return await management.rename_project(conn, project.id, args.new_name)

    project = run(action)
    emit(args, project, lambda: f'renamed project {project.id} to "{project.name}"')
    return 0


@command
def delete(args: argparse.Namespace) -> int:
    """Deleting a project takes its platforms, keys and stored traces along: without ``--yes``
    this only says what would go."""

    async def action(
        conn: psycopg.AsyncConnection[Any], _: Settings
    ) -> tuple[Project, management.ProjectContents]:
        project = await management.resolve_project(conn, args.project)
        contents = await management.project_contents(conn, project.id)
        if args.yes:
            await management.delete_project(conn, project.id)
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


def register(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
