"""``mibo-ingest db upgrade | current | expire``: schema migrations, and retention by hand, against
DATABASE_URL."""

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


def expire(args: argparse.Namespace) -> int:
    """One retention round now (the storage worker runs the same every 10 minutes when
    TRACE_RETENTION_DAYS is set): ``--days`` wins over the setting."""
    import asyncio

    from shared.db import retention
    from shared.runtime.settings import libpq_url

    days = args.days if args.days is not None else Settings.from_env().trace_retention_days
    if days <= 0:
        raise SystemExit("retention is off: set TRACE_RETENTION_DAYS, or pass --days N (N >= 1)")
    done = asyncio.run(retention.expire(libpq_url(_url()), days, args.batch))
    if done.skipped:
        print("another retention round is running (a storage worker's); nothing done")
        return 1
    print(f"expired {done.traces} trace(s) received over {days} day(s) ago, and {done.aliases} alias(es)")
    return 0


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = groups.add_parser("db", help="database migrations")
    sub = db.add_subparsers(dest="action", required=True)
    p = sub.add_parser("upgrade", help="apply migrations (default: to the latest)")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(handler=upgrade)
    sub.add_parser("current", help="the applied revision").set_defaults(handler=current)
    p = sub.add_parser(
        "expire", help="delete traces older than the retention (TRACE_RETENTION_DAYS or --days)"
    )
    p.add_argument(
        "--days", type=int, help="keep traces received in the last N days (default: TRACE_RETENTION_DAYS)"
    )
    p.add_argument("--batch", type=int, default=2000, help="traces deleted per transaction")
    p.set_defaults(handler=expire)
