"""``python -m ingest_api``: settings → logging → serve (INGEST_WORKERS processes on one port)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import structlog

from ingest_api.server import serve_forever
from shared.runtime.logging import configure_logging
from shared.runtime.settings import Settings


def _run_one(settings: Settings, reuse_port: bool) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve_forever(settings, reuse_port=reuse_port))


def _run_many(settings: Settings) -> int:
    """Fork the workers before any event loop exists; forward SIGTERM/SIGINT; wait for all."""
    children: list[int] = []
    for _ in range(settings.ingest_workers):
        pid = os.fork()
        if pid == 0:
            _run_one(settings, reuse_port=True)
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


def main() -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level, service="ingest_api")
    log = structlog.get_logger("ingest_api")
    if settings.uses_dev_pepper:
        log.warning("KEY_PEPPER is the built-in development default: set a secret of your own in production")
    if not settings.database_url:
        log.error("DATABASE_URL is not set")
        return 2
    if settings.ingest_workers > 1:
        return _run_many(settings)
    _run_one(settings, reuse_port=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
