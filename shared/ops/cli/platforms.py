"""``mibo-ingest platforms create | list | update | delete`` (a platform is what Mibo also calls an
agent: an n8n workflow, a Flowise chatflow, an HTTP API or anything custom)."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
import psycopg

from shared import registry
from shared.ops.cli.common import add_json_flag, add_project_option, command, emit, or_dash, run, table, when
from shared.registry import PLATFORM_TYPES, Platform
from shared.runtime.settings import Settings


def _describe(platform: Platform) -> str:
    ids = [f"workflow_id {platform.workflow_id}"] if platform.workflow_id else []
    ids += [f"chatflow_id {platform.chatflow_id}"] if platform.chatflow_id else []
    ids += [f"otlp_service_name {platform.otlp_service_name}"] if platform.otlp_service_name else []
    suffix = f", {', '.join(ids)}" if ids else ""
    return f'{platform.type} platform "{platform.name}" ({platform.id}{suffix})'


@command
def create(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], _: Settings) -> Platform:
        project = await registry.resolve_project(conn, args.project)
        return await registry.create_platform(
            conn,
            project.id,
            args.name,
            args.type,
            workflow_id=args.workflow_id,
            chatflow_id=args.chatflow_id,
            otlp_service_name=args.otlp_service_name,
        )

    platform = run(action)
    emit(args, platform, lambda: f"created {_describe(platform)}")
    return 0


@command
def list_(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], _: Settings) -> list[Platform]:
        project = await registry.resolve_project(conn, args.project)
        return await registry.list_platforms(conn, project.id)

    platforms = run(action)
    rows = [
        (
            str(p.id),
            p.name,
            p.type,
            or_dash(p.workflow_id),
            or_dash(p.chatflow_id),
            or_dash(p.otlp_service_name),
            when(p.created_at),
        )
        for p in platforms
    ]
    headers = ("ID", "NAME", "TYPE", "WORKFLOW ID", "CHATFLOW ID", "OTLP SERVICE", "CREATED")
    emit(args, platforms, lambda: table(headers, rows, "no platforms in this project yet"))
    return 0


def _identifier_change(value: str | None) -> str | msgspec.UnsetType | None:
    """Option absent: unchanged; ``''``: cleared; anything else: the new identifier."""
    if value is None:
        return msgspec.UNSET
    return value or None


@command
def update(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], _: Settings) -> Platform:
        project = await registry.resolve_project(conn, args.project)
        platform = await registry.resolve_platform(conn, project.id, args.platform)
        return await registry.update_platform(
            conn,
            project.id,
            platform.id,
            name=msgspec.UNSET if args.name is None else args.name,
            workflow_id=_identifier_change(args.workflow_id),
            chatflow_id=_identifier_change(args.chatflow_id),
            otlp_service_name=_identifier_change(args.otlp_service_name),
        )

    platform = run(action)
    emit(args, platform, lambda: f"updated {_describe(platform)}")
    return 0


@command
def delete(args: argparse.Namespace) -> int:
    async def action(conn: psycopg.AsyncConnection[Any], _: Settings) -> Platform:
        project = await registry.resolve_project(conn, args.project)
        platform = await registry.resolve_platform(conn, project.id, args.platform)
        await registry.delete_platform(conn, project.id, platform.id)
        return platform

    platform = run(action)
    emit(
        args,
        {"id": platform.id, "deleted": True},
        lambda: f"deleted {_describe(platform)}; keys restricted to it no longer reach it",
    )
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser(
        "platforms", help="platforms (agents) of a project: create, list, update, delete"
    )
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = add_json_flag(sub.add_parser("create", help="add a platform to a project"))
    p.add_argument("name", help="the platform's name (unique within the project)")
    add_project_option(p)
    p.add_argument("--type", "-t", required=True, choices=PLATFORM_TYPES)
    p.add_argument("--workflow-id", help="n8n only: the workflow id traces carry as metadata.workflowId")
    p.add_argument("--chatflow-id", help="flowise only: the chatflow id traces carry as metadata.chatflowId")
    p.add_argument(
        "--otlp-service-name",
        help="any type: OpenTelemetry traces whose resource service.name is this value route here",
    )
    p.set_defaults(handler=create)

    p = add_json_flag(sub.add_parser("list", help="list a project's platforms"))
    add_project_option(p)
    p.set_defaults(handler=list_)

    p = add_json_flag(sub.add_parser("update", help="rename a platform or change its routing identifier"))
    p.add_argument("platform", help="platform id or name")
    add_project_option(p)
    p.add_argument("--name", help="new name")
    p.add_argument("--workflow-id", help="new n8n workflow id ('' removes it)")
    p.add_argument("--chatflow-id", help="new Flowise chatflow id ('' removes it)")
    p.add_argument("--otlp-service-name", help="new OpenTelemetry service.name ('' removes it)")
    p.set_defaults(handler=update)

    p = add_json_flag(sub.add_parser("delete", help="delete a platform (its traces stay)"))
    p.add_argument("platform", help="platform id or name")
    add_project_option(p)
    p.set_defaults(handler=delete)
