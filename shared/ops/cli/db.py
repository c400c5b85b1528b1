"""``mibo-ingest db upgrade | current``: schema migrations against DATABASE_URL."""

from __future__ import annotations

import argparse

from shared.runtime.settings import Settings


def _url() -> str:
    url = Settings.from_env().database_url
    if not url:
        raise SystemExit("DATABASE_URL is not set (after `mibo-ingest dev up`: . .devstack/env)")
    return url


def upgrade(args: argparse.Namespace) -> int:
    from shared.db import migrate  # alembic is slow to import: only the db commands pay for it

    migrate.upgrade(_url(), args.revision)
    print(f"database at {migrate.current(_url())}")
    return 0


def current(args: argparse.Namespace) -> int:
    from shared.db import migrate

    print(migrate.current(_url()) or "empty (no migrations applied)")
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = groups.add_parser("db", help="database migrations")
    sub = db.add_subparsers(dest="action", required=True)
    p = sub.add_parser("upgrade", help="apply migrations (default: to the latest)")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(handler=upgrade)
    sub.add_parser("current", help="the applied revision").set_defaults(handler=current)
