"""``python -m console.screenshots``: the README's console screenshots, taken from a real run.

Against the running local stack (``make screenshots`` runs ``mibo-ingest dev up`` first and
sources ``.devstack/env``): it (re)makes a project ``acme`` with the registry, drives the console
in Debian's Chromium through the seed's key flow and the dead-letter story — real keys, real
traces through the real pipeline — and writes ``docs/console/*.png``. The new key is masked in
its screenshot.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import aiohttp
import psycopg
from playwright.async_api import Locator, Page, async_playwright

from shared import registry
from shared.runtime.settings import Settings, libpq_url

OUT = Path("docs/console")
CHROMIUM = "/usr/bin/chromium"
PROJECT = "acme"


async def _tenant(settings: Settings) -> tuple[str, str]:
    """A fresh project ``acme``: its id and an unrestricted key."""
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        for project in await registry.list_projects(conn):
            if project.name == PROJECT:
                await registry.delete_project(conn, project.id)
        project = await registry.create_project(conn, PROJECT)
        await registry.create_platform(conn, project.id, "n8n orders", "n8n", workflow_id="wf-orders")
        await registry.create_platform(conn, project.id, "n8n returns", "n8n")
        await registry.create_platform(conn, project.id, "Support bot", "flowise", chatflow_id="cf-support")
        await registry.create_platform(
            conn, project.id, "Checkout API", "http_api", otlp_service_name="checkout"
        )
        created = await registry.create_key(conn, settings.key_pepper, project.id, "Backfill (all platforms)")
    return str(project.id), created.key


async def _send(ingest: str, key: str, body: dict[str, object], request_id: str | None = None) -> str:
    headers = {"x-api-key": key} | ({"x-request-id": request_id} if request_id else {})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{ingest}/public/traces", json=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
            return str((await resp.json())["data"]["id"])


async def _reload_until(page: Page, locator: Locator, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await locator.count():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {locator} on {page.url}")
        await asyncio.sleep(0.5)
        await page.reload()


async def _shot(page: Page, name: str, *, full_page: bool = False, mask: list[Locator] | None = None) -> None:
    path = OUT / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page, mask=mask)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


async def take(settings: Settings, console: str, ingest: str) -> None:
    project_id, backfill_key = await _tenant(settings)
    base = f"/projects/{project_id}"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = await browser.new_context(base_url=console, viewport={"width": 1280, "height": 800})
        page = await context.new_page()

        await page.goto("/signin")
        await _shot(page, "01-sign-in")
        await page.get_by_label("Admin token").fill(settings.admin_token)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url("**/projects")
        await _shot(page, "02-projects")

        await page.goto(f"{base}/platforms")
        await _shot(page, "03-platforms", full_page=True)

        await page.goto(f"{base}/keys")
        await page.get_by_label("Name (what it is for").fill("Production n8n")
        await page.get_by_label("n8n orders").check()
        await page.get_by_label("n8n returns").check()
        await page.get_by_role("button", name="Create API Key").click()
        key = await page.get_by_label("Your new API key").input_value()
        await _shot(page, "04-key-shown-once", mask=[page.get_by_label("Your new API key")])

        await _send(
            ingest,
            key,
            {"data": {"input": "order 1001", "output": "shipped"}, "metadata": {"workflowId": "wf-orders"}},
        )
        await _send(
            ingest, backfill_key, {"data": {"input": "ticket 7"}, "metadata": {"chatflowId": "cf-support"}}
        )
        # An execution of a workflow no platform has yet: both n8n platforms could take it.
        trace_id = await _send(
            ingest,
            key,
            {"data": {"input": "return 77", "output": "refunded"}, "metadata": {"workflowId": "wf-returns"}},
            "returns-exec-77",
        )
        await page.goto(f"{base}/keys")
        await _reload_until(
            page, page.locator("#keys tr", has_text="Production n8n").locator("time[title]").nth(1)
        )
        await _shot(page, "05-api-keys")

        await page.goto(f"{base}/dead-letters")
        await _reload_until(page, page.locator("li.letter"))
        await _shot(page, "06-dead-letters", full_page=True)

        await page.goto(f"{base}/platforms")
        await page.get_by_role("link", name="Edit n8n returns").click()
        await page.get_by_label("Workflow id").fill("wf-returns")
        await page.get_by_role("button", name="Save").click()
        await page.goto(f"{base}/dead-letters")
        await page.get_by_label("Select all shown").check()
        await page.get_by_role("button", name="Dry run the selection").click()
        await _shot(page, "07-dry-run")
        await page.get_by_role("button", name=re.compile("^Replay")).click()
        await _shot(page, "08-replayed")

        await page.goto(f"{base}/traces?ref={trace_id}")
        await _reload_until(page, page.locator("article.receipt.stored"))
        await _shot(page, "09-trace-lookup", full_page=True)

        await page.goto("/pipeline")
        await asyncio.sleep(5)  # two polls: rates need two readings
        await _shot(page, "10-pipeline", full_page=True)

        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto(f"{base}/keys")
        await _shot(page, "11-api-keys-phone", full_page=True)
        await browser.close()


def main() -> int:
    settings = Settings.from_env()
    console = os.environ.get("CONSOLE_URL", f"http://127.0.0.1:{settings.console_port}")
    ingest = os.environ.get("INGEST_URL", f"http://127.0.0.1:{settings.ingest_port}")
    if not settings.database_url or not settings.admin_token:
        print("run it against the local stack: mibo-ingest dev up && . .devstack/env", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    asyncio.run(take(settings, console, ingest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
