"""``mibo-ingest dev up | down | status | logs``: the local stack (see shared.devstack.stack)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from shared.devstack.demo import describe
from shared.devstack.stack import DemoMode, Stack, read_new_lines


def _stack(args: argparse.Namespace) -> Stack:
    return Stack(Path(args.dir))


def up(args: argparse.Namespace) -> int:
    """Start the stack; end with what to paste: the seed's curl with the demo key (shown by the
    ``up`` that created it, and never again) or, later, with ``$MIBO_API_KEY`` from ``env``."""
    stack = _stack(args)
    demo: DemoMode = "auto" if args.demo is None else "on" if args.demo else "off"
    workers = {
        name: count
        for name, count in (("router_worker", args.routers), ("storage_worker", args.storage_workers))
        if count is not None
    }
    stack.up(
        services=not args.no_services,
        demo=demo,  # no services: no demo
        brokers=args.brokers,
        workers=workers,
        ingest_workers=args.ingest_workers,
    )
    print()
    print(f"environment written to {stack.env_file}  (load it with: . {stack.env_file})")
    print(f"POST traces to {stack.ingest_url}/public/traces")
    if not args.no_services:
        console = stack.service_env()["CONSOLE_URL"]
        print(
            f"operator console at {console}: sign in with the admin token ($ADMIN_TOKEN in {stack.env_file})"
        )
    if stack.demo is not None:
        print()
        print(describe(stack.demo, stack.root, stack.ingest_url))
    return 0


def down(args: argparse.Namespace) -> int:
    _stack(args).down()
    return 0


def status(args: argparse.Namespace) -> int:
    """What runs where; exit 1 when a component the stack manages is down (or not itself)."""
    stack = _stack(args)
    rows = stack.status()
    width = max(len(r[0]) for r in rows)
    for name, state, where in rows:
        print(f"{name:<{width}}  {state:<18}  {where}")
    if rows[0][:2] == ("stack", "not created"):
        print(f"no stack in {stack.root}: `mibo-ingest dev up` creates one", file=sys.stderr)
        return 1
    if args.partitions:
        _print_assignments(stack)
    if problems := stack.problems(rows):
        print(
            f"not up: {', '.join(problems)}; `mibo-ingest dev up` starts what is down, "
            f"`mibo-ingest dev logs {problems[0]}` shows why it stopped",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_assignments(stack: Stack) -> None:
    """Which worker process holds which partitions, per consumer group."""
    try:
        held = stack.assignments()
    except Exception as exc:  # Kafka away: the rows above say so; this is extra
        print(f"\npartitions: not known ({type(exc).__name__}: {exc})")
        return
    print("\npartitions (consumer group → topic: partitions)")
    if not held:
        print("  no consumer has joined a group yet")
    for who, lines in sorted(held.items()):
        for line in lines:
            print(f"  {who:<36}  {line}")


def logs(args: argparse.Namespace) -> int:
    """The last ``--lines`` of each component's log, then (``-f``) what they add. Each line is
    prefixed with its component, or (``--raw``) printed as written: the services' JSON lines then
    pipe into ``jq``."""
    stack = _stack(args)
    for line in stack.follow(args.component, lines=args.lines, raw=args.raw):
        print(line)
    if not args.follow:
        return 0
    sys.stdout.flush()
    files = {n: p for n, p in stack.logfiles().items() if not args.component or n in args.component}
    offsets = {n: (p.stat().st_size if p.exists() else 0) for n, p in files.items()}
    while True:
        for name, path in files.items():
            lines, offsets[name] = read_new_lines(path, offsets[name])
            for line in lines:
                print(line if args.raw else f"{name:<15} {line}")
        sys.stdout.flush()
        time.sleep(0.5)


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = groups.add_parser("dev", help="the local stack: Kafka, PostgreSQL and the services")
    dev.add_argument(
        "--dir",
        default=os.environ.get("MIBO_DEVSTACK_DIR", ".devstack"),
        help="state folder (default .devstack)",
    )
    sub = dev.add_subparsers(dest="action", required=True)
    p = sub.add_parser("up", help="start what is not running, wait until it answers, write .devstack/env")
    p.add_argument("--no-services", action="store_true", help="only Kafka, PostgreSQL, migrations and topics")
    p.add_argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the demo project, platforms and key (made once): by default on the stack's own "
        "PostgreSQL only; --demo also on a DATABASE_URL from the environment, --no-demo never",
    )
    p.add_argument(
        "--brokers",
        type=int,
        default=None,
        help="Kafka brokers: 1 (default) or a cluster of N (a controller of its own, topics with "
        "min(3, N) replicas, min.insync.replicas=replicas-1); changes need `dev down` first",
    )
    p.add_argument("--routers", type=int, default=None, help="router_worker processes (one group)")
    p.add_argument("--storage-workers", type=int, default=None, help="storage_worker processes (one group)")
    p.add_argument("--ingest-workers", type=int, default=None, help="ingest processes (INGEST_WORKERS)")
    p.set_defaults(handler=up)
    sub.add_parser("down", help="stop everything `up` started").set_defaults(handler=down)
    p = sub.add_parser("status", help="what runs where; exits 1 when a component is down")
    p.add_argument(
        "--no-partitions",
        dest="partitions",
        action="store_false",
        help="leave out which worker holds which partitions (asked of Kafka)",
    )
    p.set_defaults(handler=status)
    p = sub.add_parser("logs", help="show (and follow) the components' logs")
    p.add_argument(
        "component", nargs="*", help="kafka, postgres, ingest_api, router_worker, storage_worker, console"
    )
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument(
        "--raw",
        action="store_true",
        help="lines as written, without the component prefix (dev logs --raw ingest_api | jq .)",
    )
    p.set_defaults(handler=logs)
