"""Admin HTTP API (SPEC §2) — being written for issue 3."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Mount /admin/v1/* on ``app``."""
