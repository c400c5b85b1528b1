"""``GET /public/traces?platformId=…`` through the real pipeline: the key's traces, newest first,
page by page, scoped exactly like reading one trace."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import psycopg

from shared import registry
from shared.devstack.pipeline import Service
from shared.runtime.settings import Settings, libpq_url
from tests.storage_helpers import eventually


async def call(ingest: Service, key: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{ingest.url}/public/traces", params=params, headers={"x-api-key": key}
        ) as resp:
            return resp.status, await resp.json()


async def post(ingest: Service, key: str, n: int) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{ingest.url}/public/traces", json={"data": {"n": n}}, headers={"x-api-key": key}
        ) as resp:
            assert resp.status == 202
            return (await resp.json())["data"]["id"]


async def test_listing_is_scoped_newest_first_and_paginated(
    ingest: Service, router: Service, storage: Service, settings: Settings
) -> None:
    suffix = uuid.uuid4().hex[:8]
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"list-{suffix}")
        flow = await registry.create_platform(conn, project.id, "flow", "flowise")
        n8n = await registry.create_platform(conn, project.id, "n8n", "n8n")
        a = (await registry.create_key(conn, settings.key_pepper, project.id, "A", [flow.id])).key
        b = (await registry.create_key(conn, settings.key_pepper, project.id, "B", [n8n.id])).key
        everything = (await registry.create_key(conn, settings.key_pepper, project.id, "all")).key
    mine = [await post(ingest, a, i) for i in range(5)]
    theirs = [await post(ingest, b, i) for i in range(2)]

    async def all_stored() -> bool:
        status, answer = await call(ingest, everything, limit="100")
        return status == 200 and len(answer["data"]["traces"]) == 7

    await eventually(all_stored, timeout=60, what="seven traces listed")

    ids: list[str] = []
    cursor: dict[str, str] = {}
    pages = 0
    while True:
        status, answer = await call(ingest, a, platformId=str(flow.id), limit="2", **cursor)
        assert status == 200, answer
        ids += [t["id"] for t in answer["data"]["traces"]]
        assert all(t["platformId"] == str(flow.id) for t in answer["data"]["traces"])
        pages += 1
        if answer["data"]["nextCursor"] is None:
            break
        cursor = {"cursor": answer["data"]["nextCursor"]}
    assert pages == 3 and ids == list(reversed(mine))  # newest first (UUIDv7 ids: oldest first)

    status, answer = await call(ingest, a)  # no platformId: everything the key reaches
    assert status == 200 and {t["id"] for t in answer["data"]["traces"]} == set(mine)
    status, answer = await call(ingest, a, platformId=str(n8n.id))
    assert status == 403 and answer["error"]["code"] == "PLATFORM_NOT_ALLOWED"
    status, answer = await call(ingest, everything, platformId=str(n8n.id))
    assert status == 200 and [t["id"] for t in answer["data"]["traces"]] == list(reversed(theirs))
    status, answer = await call(ingest, everything, cursor="garbage")
    assert status == 400 and answer["error"]["details"][0]["path"] == "cursor"
