"""``mibo-ingest dlq tail | stats | replay``: the dead-letter topic for operators.

``tail`` lists records (oldest first; ``--follow`` keeps reading), filtered by reason, key id,
project, platform or age, reading the topic without a consumer group, so looking never changes
anything. ``stats`` counts them by reason, key, platform and age — from the dead-letter index in
PostgreSQL (``dlq_index``, kept by the storage worker; one grouped query, however long the topic),
which also says how many were resolved (stored after a replay); ``--from-topic`` counts the topic
itself instead (what is still there, without the index's lag). The same filters mean the same in
both. ``replay`` re-produces the selected records to traces.raw (see router_worker.replay),
``--dry-run`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg

from shared.contracts.topics import Topics
from shared.ops.cli.common import add_json_flag, table
from shared.registry.validation import as_uuid
from shared.runtime.dlq_reader import DlqEntry, describe, read
from shared.runtime.settings import Settings, libpq_url

AGE_BUCKETS = (
    (dt.timedelta(hours=1), "< 1 h"),
    (dt.timedelta(days=1), "< 1 day"),
    (dt.timedelta(days=7), "< 7 days"),
)


def parse_age(text: str) -> dt.timedelta:
    """``30m``, ``2h``, ``7d`` → a duration."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    try:
        return dt.timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30m, 2h, 7d)") from None


def selector(args: argparse.Namespace) -> Callable[[DlqEntry], bool]:
    """The filters of ``tail``/``stats``/``replay`` as one predicate."""
    now = dt.datetime.now(dt.UTC)

    def keep(entry: DlqEntry) -> bool:
        if args.reason and entry.reason not in args.reason:
            return False
        if args.key_id and str(entry.key_id) != args.key_id:
            return False
        if args.project and str(entry.project_id) != args.project:
            return False
        if (
            args.platform
            and str(entry.platform_id) != args.platform
            and args.platform not in entry.candidates
        ):
            return False
        failed = entry.failed_at or now
        if args.newer_than and now - failed > args.newer_than:
            return False
        return not (args.older_than and now - failed < args.older_than)

    return keep


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", action="append", help="only this reason (repeatable)")
    parser.add_argument("--key-id", help="only records sent with this API key id")
    parser.add_argument("--project", help="only this project id")
    parser.add_argument("--platform", help="only this platform id (explicit, routed or a candidate)")
    parser.add_argument(
        "--newer-than", type=parse_age, metavar="AGE", help="dead-lettered within AGE (30m, 2h, 7d)"
    )
    parser.add_argument("--older-than", type=parse_age, metavar="AGE", help="dead-lettered more than AGE ago")


def _topic(settings: Settings) -> str:
    return Topics.with_prefix(settings.kafka_topic_prefix).dlq


def _short(value: object) -> str:
    return "-" if value is None else str(value)


def _line(entry: DlqEntry) -> list[str]:
    when = entry.failed_at.strftime("%Y-%m-%d %H:%M:%S") if entry.failed_at else "-"
    return [when, entry.reason, entry.stage, _short(entry.key_id), _short(entry.trace_id), entry.detail]


async def _tail(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    keep = selector(args)
    shown: list[list[str]] = []
    async for record in read(settings.kafka_bootstrap_servers, _topic(settings), follow=args.follow):
        entry = describe(record)
        if not keep(entry):
            continue
        if args.json:
            print(msgspec.json.encode(entry).decode(), flush=True)
        elif args.follow:
            print("  ".join(_line(entry)), flush=True)
        else:
            shown.append(_line(entry))
    if not args.json and not args.follow:
        shown = shown[-args.limit :] if args.limit else shown
        print(
            table(
                ["failed at (UTC)", "reason", "stage", "key id", "trace id", "detail"],
                shown,
                "no dead-lettered records",
            )
        )
    return 0


def _age(entry: DlqEntry, now: dt.datetime) -> str:
    if entry.failed_at is None:
        return "unknown"
    age = now - entry.failed_at
    return next((label for limit, label in AGE_BUCKETS if age < limit), ">= 7 days")


Counts = dict[str, Counter[str]]
GROUPS = ("reason", "key", "platform", "age")


async def _topic_counts(settings: Settings, args: argparse.Namespace) -> tuple[int, Counts]:
    keep = selector(args)
    now = dt.datetime.now(dt.UTC)
    counts: Counts = {name: Counter() for name in GROUPS}
    total = 0
    async for record in read(settings.kafka_bootstrap_servers, _topic(settings)):
        entry = describe(record)
        if not keep(entry):
            continue
        total += 1
        counts["reason"][entry.reason] += 1
        counts["key"][_short(entry.key_id)] += 1
        counts["platform"][_short(entry.platform_id)] += 1
        counts["age"][_age(entry, now)] += 1
    return total, counts


def index_filters(args: argparse.Namespace, topic: str) -> tuple[str, dict[str, Any]]:
    """:func:`selector`'s filters as a WHERE clause on ``dlq_index`` (and its parameters): the same
    records pass. Ids that are not UUIDs match nothing, as they match no record of the topic."""
    clauses = ["topic = %(topic)s"]
    params: dict[str, Any] = {"topic": topic}
    if args.reason:
        clauses.append("reason = ANY(%(reason)s)")
        params["reason"] = list(args.reason)
    for option, column in (("key_id", "api_key_id"), ("project", "project_id")):
        text = getattr(args, option)
        if text:
            clauses.append(f"{column} = %({option})s")
            params[option] = as_uuid(text)  # None: NULL, which equals nothing
    if args.platform:
        clauses.append("(platform_id::text = %(platform)s OR %(platform)s = ANY(candidates))")
        params["platform"] = args.platform
    if args.newer_than:  # a record without a time counts as new, as in selector()
        clauses.append("coalesce(failed_at, now()) >= now() - %(newer_than)s")
        params["newer_than"] = args.newer_than
    if args.older_than:
        clauses.append("coalesce(failed_at, now()) <= now() - %(older_than)s")
        params["older_than"] = args.older_than
    return " AND ".join(clauses), params


def _age_case() -> tuple[str, dict[str, Any]]:
    """:func:`_age` in SQL: the same buckets, the same labels."""
    whens = [f"WHEN now() - failed_at < %(age{i})s THEN %(label{i})s" for i in range(len(AGE_BUCKETS))]
    params: dict[str, Any] = {}
    for i, (limit, label) in enumerate(AGE_BUCKETS):
        params[f"age{i}"], params[f"label{i}"] = limit, label
    return f"CASE WHEN failed_at IS NULL THEN 'unknown' {' '.join(whens)} ELSE '>= 7 days' END", params


def stats_query(args: argparse.Namespace, topic: str) -> tuple[str, dict[str, Any]]:
    """One grouped query: a row (group, value, count) per reason, key, platform, age and state
    (resolved or not), and the total (group ``total``)."""
    where, params = index_filters(args, topic)
    age, age_params = _age_case()
    sql = f"""
SELECT CASE WHEN grouping(reason) = 0 THEN 'reason' WHEN grouping(k) = 0 THEN 'key'
            WHEN grouping(p) = 0 THEN 'platform' WHEN grouping(age) = 0 THEN 'age'
            WHEN grouping(state) = 0 THEN 'state' ELSE 'total' END,
       coalesce(reason, k, p, age, state, ''), count(*)
FROM (SELECT reason, coalesce(api_key_id::text, '-') AS k, coalesce(platform_id::text, '-') AS p,
             {age} AS age, CASE WHEN resolved_at IS NULL THEN 'unresolved' ELSE 'resolved' END AS state
      FROM dlq_index WHERE {where}) AS e
GROUP BY GROUPING SETS ((reason), (k), (p), (age), (state), ())
"""
    return sql, {**params, **age_params}


async def _index_counts(settings: Settings, args: argparse.Namespace) -> tuple[int, Counts]:
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set (after `mibo-ingest dev up`: . .devstack/env)")
    sql, params = stats_query(args, _topic(settings))
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        cur = await conn.execute(sql, params)
        rows = await cur.fetchall()
    counts: Counts = {name: Counter() for name in (*GROUPS, "state")}
    total = 0
    for group, value, n in rows:
        if group == "total":
            total = n
        else:
            counts[group][value] = n
    return total, counts


async def _stats(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    source = "topic" if args.from_topic else "index"
    if args.from_topic:
        total, counts = await _topic_counts(settings, args)
    else:
        total, counts = await _index_counts(settings, args)
    if args.json:
        out = {"total": total, "source": source, **{k: dict(v) for k, v in counts.items()}}
        print(msgspec.json.encode(out).decode())
        return 0
    where = (
        f"in {_topic(settings)}"
        if args.from_topic
        else f"indexed from {_topic(settings)} (--from-topic reads the topic itself)"
    )
    print(f"{total} dead-lettered record(s) {where}")
    for name, counter in counts.items():
        if counter:
            print()
            print(table([f"by {name}", "count"], [[k, str(n)] for k, n in counter.most_common()], ""))
    return 0


async def _replay(args: argparse.Namespace) -> int:
    from router_worker.replay import execute, plan

    settings = Settings.from_env()
    candidates = await plan(settings, selector(args))
    if args.again:
        for candidate in candidates:
            candidate.already_replayed = False
    fresh = [c for c in candidates if not c.already_replayed]
    skipped = len(candidates) - len(fresh)
    if args.json:
        for c in candidates:
            print(
                msgspec.json.encode(
                    {"entry": c.entry, "now": c.now, "already_replayed": c.already_replayed}
                ).decode()
            )
    else:
        rows = [
            [
                c.entry.source,
                c.entry.reason,
                _short(c.entry.trace_id),
                c.now,
                "skip: replayed before" if c.already_replayed else "replay",
            ]
            for c in candidates
        ]
        print(
            table(
                ["dlq record", "reason", "trace id", "router would now", "action"],
                rows,
                "no matching records",
            )
        )
        print()
    if args.dry_run:
        print(
            f"dry run: {len(fresh)} record(s) would be replayed, {skipped} skipped (replayed before)",
            file=sys.stderr,
        )
        return 0
    replayed = await execute(settings, fresh)
    print(f"replayed {replayed} record(s) into {Topics.with_prefix(settings.kafka_topic_prefix).raw}, "
          f"{skipped} skipped (replayed before)", file=sys.stderr)  # fmt: skip
    return 0


def replay(args: argparse.Namespace) -> int:
    return asyncio.run(_replay(args))


def tail(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_tail(args))
    except KeyboardInterrupt:
        return 0


def stats(args: argparse.Namespace) -> int:
    return asyncio.run(_stats(args))


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("dlq", help="browse and count the dead-letter topic")
    sub = group.add_subparsers(dest="action", required=True)
    p = sub.add_parser("tail", help="list dead-lettered records (oldest first)")
    add_filters(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep reading new records")
    p.add_argument("-n", "--limit", type=int, default=50, help="show the last N (0: all; table output only)")
    add_json_flag(p)
    p.set_defaults(handler=tail)
    p = sub.add_parser(
        "replay", help="re-produce selected records to traces.raw (after fixing the configuration)"
    )
    add_filters(p)
    p.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed and how it would route now"
    )
    p.add_argument("--again", action="store_true", help="also replay records replayed before")
    add_json_flag(p)
    p.set_defaults(handler=replay)
    p = sub.add_parser(
        "stats", help="counts by reason, key, platform and age (from the dead-letter index in PostgreSQL)"
    )
    add_filters(p)
    p.add_argument(
        "--from-topic", action="store_true", help="count the records of the topic itself, not the index"
    )
    add_json_flag(p)
    p.set_defaults(handler=stats)
