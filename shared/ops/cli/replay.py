"""``mibo-ingest replay raw | file``: batch replays (SPEC §8), with progress bars and checkpoints.

- ``replay raw --since T [--until T]``: re-drive a time range of traces.raw through the router
  (router_worker.redrive), e.g. after a routing fix.
- ``replay file traces.jsonl --url URL --key KEY``: backfill a JSONL archive through the public
  batch API (shared.ops.file_backfill).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shared.ops.cli.dlq import parse_age
from shared.runtime.settings import Settings


def parse_moment(text: str) -> dt.datetime:
    """An ISO 8601 time (UTC when no zone is given) or an age like ``2h`` (that long ago)."""
    try:
        return dt.datetime.now(dt.UTC) - parse_age(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (ISO 8601, or an age like 2h)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _progress(description: str) -> tuple[Progress, Callable[[int, int], None]]:
    bar = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not sys.stderr.isatty(),
        console=None,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def raw(args: argparse.Namespace) -> int:
    from router_worker.redrive import redrive

    settings = Settings.from_env()
    bar, update = _progress("re-driving traces.raw")
    with bar:
        done, metrics = asyncio.run(
            redrive(settings, args.since, args.until, checkpoint=args.checkpoint, progress=update)
        )
    routed = sum(s.value for m in metrics.routed.collect() for s in m.samples if s.name.endswith("_total"))
    dead = sum(
        s.value for m in metrics.dead_lettered.collect() for s in m.samples if s.name.endswith("_total")
    )
    print(f"re-drove {done} record(s): {routed:.0f} routed, {dead:.0f} dead-lettered", file=sys.stderr)
    return 0


def file(args: argparse.Namespace) -> int:
    from shared.ops.file_backfill import backfill

    key = args.key or os.environ.get(args.key_env, "")
    if not key:
        raise SystemExit(f"give the API key with --key or in ${args.key_env}")
    url = args.url or os.environ.get("INGEST_URL", "")
    if not url:
        raise SystemExit("give the API's base URL with --url (or set INGEST_URL)")
    bar, update = _progress(f"sending {args.path.name}")
    with bar:
        summary = asyncio.run(
            backfill(
                args.path,
                url,
                key,
                batch_size=args.batch,
                concurrency=args.concurrency,
                rate=args.rate,
                checkpoint=args.checkpoint,
                progress=update,
            )
        )
    print(
        f"{summary.queued} queued, {summary.rejected} rejected "
        f"(see {args.path.name}.rejected.jsonl), {summary.retried} retried, "
        f"{summary.skipped} skipped before the checkpoint",
        file=sys.stderr,
    )
    for error in summary.errors[:20]:
        print(f"  {error}", file=sys.stderr)
    return 0 if summary.rejected == 0 else 1


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = groups.add_parser("replay", help="batch replays: re-drive traces.raw, backfill JSONL archives")
    sub = group.add_subparsers(dest="action", required=True)
    p = sub.add_parser("raw", help="re-drive a time range of traces.raw through the router")
    p.add_argument("--since", type=parse_moment, required=True, help="ISO 8601 time or an age (2h, 7d)")
    p.add_argument("--until", type=parse_moment, help="ISO 8601 time or an age (default: now)")
    p.add_argument("--checkpoint", type=Path, help="file to resume from and record progress in")
    p.set_defaults(handler=raw)
    p = sub.add_parser("file", help="send a JSONL archive (one trace per line) through the batch API")
    p.add_argument("path", type=Path)
    p.add_argument("--url", help="the API's base URL (default: $INGEST_URL)")
    p.add_argument("--key", help="API key (prefer --key-env: a command line is visible to other users)")
    p.add_argument("--key-env", default="MIBO_API_KEY", help="environment variable holding the key")
    p.add_argument("--batch", type=int, default=100, help="traces per request")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--rate", type=float, help="most traces per second (default: unlimited)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: <file>.checkpoint.json)")
    p.set_defaults(handler=file)
