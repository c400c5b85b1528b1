"""``mibo-ingest keys create | list | revoke``: API keys, as the seed document describes them.

``create`` is the only command that ever prints a full key, once, with a warning to store it; in
``--json`` mode the key is in the JSON on stdout and the warning goes to stderr, so a script can
capture the one without the other. Everything else shows ``mibo_...`` + the last 4 characters.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import psycopg

from shared import registry
from shared.ops.cli.common import add_json_flag, add_project_option, command, emit, run, table, when
from shared.registry import ApiKey, CreatedKey, PlatformRef
from shared.runtime.settings import Settings

STORE_IT_WARNING = (
    "Store this key now (in a secret manager): it is shown only this once and cannot be recovered.\n"
    "Send it in the x-api-key header. If it is lost, create a new key and revoke this one."
)


def scope_text(restricted: bool, platforms: list[PlatformRef]) -> str:
    """The seed's two kinds of key: all platforms of the project, or the listed ones only."""
    if not restricted:
        return "all platforms"
    if not platforms:
        return "no platforms (restricted; its platforms were deleted)"
    return ", ".join(f"{p.name} ({p.id})" for p in platforms)


@command
def create(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], settings: Settings) -> tuple[str, CreatedKey]:
        project = await registry.resolve_project(conn, args.project)
        scope = await registry.resolve_platform_ids(conn, project.id, args.platform)
        created = await registry.create_key(conn, settings.key_pepper, project.id, args.name, scope)
        return project.name, created

    project_name, created = run(action)
    if args.json:
        print(STORE_IT_WARNING, file=sys.stderr)
    emit(args, created, lambda: _created_text(project_name, created))
    return 0


def _created_text(project_name: str, created: CreatedKey) -> str:
    return (
        f'Created API key "{created.name}" ({created.id}) in project "{project_name}".\n'
        f"Scope: {scope_text(created.restricted, created.platforms)}\n\n"
        f"    {created.key}\n\n"
        f"{STORE_IT_WARNING}"
    )


@command
def list_(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], _: Settings) -> list[ApiKey]:
        project = await registry.resolve_project(conn, args.project)
        return await registry.list_keys(conn, project.id)

    keys = run(action)
    rows = [
        (
            str(k.id),
            k.name,
            k.masked,
            scope_text(k.restricted, k.platforms),
            when(k.created_at),
            when(k.last_used_at),
        )
        for k in keys
    ]
    headers = ("ID", "NAME", "KEY", "SCOPE", "CREATED", "LAST USED")
    emit(args, keys, lambda: table(headers, rows, "no API keys in this project yet"))
    return 0


@command
def revoke(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], _: Settings) -> None:
        key_id = registry.parse_uuid(args.key_id, "key_id")
        project_id = None
        if args.project is not None:
            project_id = (await registry.resolve_project(conn, args.project)).id
        await registry.revoke_key(conn, key_id, project_id=project_id)

    run(action)
    emit(
        args,
        {"id": args.key_id, "revoked": True},
        lambda: f"revoked API key {args.key_id}: it is deleted and stops working immediately",
    )
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("keys", help="API keys of a project: create, list, revoke")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = add_json_flag(sub.add_parser("create", help="create an API key (the full key is shown once)"))
    add_project_option(p)
    p.add_argument("--name", "-n", required=True, help='a descriptive name, e.g. "Production n8n"')
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="PLATFORM",
        help="restrict the key to this platform (id or name); repeat for several. Default: all platforms",
    )
    p.set_defaults(handler=create)

    p = add_json_flag(sub.add_parser("list", help="list a project's API keys (masked)"))
    add_project_option(p)
    p.set_defaults(handler=list_)

    p = add_json_flag(sub.add_parser("revoke", help="revoke (permanently delete) an API key"))
    p.add_argument("key_id", help="the key's id (from `keys list`)")
    p.add_argument("--project", "-p", metavar="PROJECT", help="project id or name (checked when given)")
    p.set_defaults(handler=revoke)
