"""What the CLI's subcommand groups share: settings, one database connection per command, the
dev-pepper warning, ``--json`` and human tables, and turning a refused operation into a message on
stderr with exit code 1 (argparse uses 2 for usage errors)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import psycopg

from shared.registry import ManagementError
from shared.runtime.settings import Settings, libpq_url

T = TypeVar("T")
Action = Callable[[psycopg.AsyncConnection[Any], Settings], Awaitable[T]]

DEV_PEPPER_WARNING = """\
!!! WARNING: KEY_PEPPER is the built-in development value.
!!! API key hashes made with it are only as secret as this project's source code, and keys created
!!! now stop working once a real pepper is set. Set KEY_PEPPER to a long random secret in production.
"""


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
