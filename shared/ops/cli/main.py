"""``mibo-ingest``: the operator CLI's entry point; each group registers its own subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from shared.ops.cli import db, dev, dlq, keys, platforms, projects, replay, trace
from shared.runtime.logging import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mibo-ingest", description="Operate the mibo-ingest trace pipeline."
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for module in (dev, db, projects, platforms, keys, dlq, replay, trace):
        module.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Log lines (ours and the libraries') go to stderr, redacted, like every service's.
    configure_logging(
        os.environ.get("LOG_FORMAT", "auto"), os.environ.get("LOG_LEVEL", "info"), service="mibo-ingest"
    )
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
