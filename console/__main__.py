"""``python -m console``: settings → logging → serve the console on ``CONSOLE_HOST:CONSOLE_PORT``.

Exit codes: 0 after SIGTERM/SIGINT, 2 for a configuration that cannot work (no ``ADMIN_TOKEN``,
no ``DATABASE_URL``), 3 when the port cannot be bound.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from aiohttp import web

from console.app import build_app
from shared.runtime.process import EXIT_BAD_CONFIGURATION, EXIT_FAILED, EXIT_OK, service_settings
from shared.runtime.settings import Settings

log = structlog.get_logger("console")
EXIT_PORT = 3


async def serve(settings: Settings) -> int:
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.console_host, settings.console_port)
    try:
        await site.start()
    except OSError as exc:
        log.error(
            "cannot listen; exiting", host=settings.console_host, port=settings.console_port, error=str(exc)
        )
        await runner.cleanup()
        return EXIT_PORT
    log.info("console listening", url=f"http://{settings.console_host}:{settings.console_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping")
    await asyncio.wait_for(runner.cleanup(), settings.shutdown_timeout_seconds)
    return EXIT_OK


def main() -> int:
    settings = service_settings("console")
    if settings is None:
        return EXIT_BAD_CONFIGURATION
    if not settings.admin_token:
        log.error("ADMIN_TOKEN is not set: the console signs operators in with it; exiting")
        return EXIT_BAD_CONFIGURATION
    try:
        return asyncio.run(serve(settings))
    except Exception as exc:
        log.exception("console failed; exiting", error=repr(exc))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
