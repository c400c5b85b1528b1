"""Pipeline: accepted / routed / dead-lettered / stored per second, each stage's consumer lag,
and whether the stages' counters reconcile; the page polls ``/pipeline.json`` to stay current."""

from __future__ import annotations

from aiohttp import web

from console.context import DB_POOL, PIPELINE
from console.pipeline import RATES, snapshot_json
from console.render import render


async def page(request: web.Request) -> web.Response:
    snap = await request.app[PIPELINE].snapshot(request.app[DB_POOL])
    return render(
        request,
        "pipeline.html",
        {"snap": snapshot_json(snap), "rate_names": [name for name, _ in RATES], "section": "pipeline"},
    )


async def data(request: web.Request) -> web.Response:
    snap = await request.app[PIPELINE].snapshot(request.app[DB_POOL])
    return web.json_response(snapshot_json(snap), headers={"Cache-Control": "no-store"})


def setup(router: web.UrlDispatcher) -> None:
    router.add_get("/pipeline", page)
    router.add_get("/pipeline.json", data)
