"""The seed's API-key flow in the browser, against the real pipeline: create a scoped key, copy it
(shown once), the masked list, real requests with the key and "last used" changing, revoke with
confirmation, and the ingest API refusing the key within a second."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import aiohttp
import psycopg
from playwright.async_api import Page, expect

from shared import registry
from shared.devstack.pipeline import Service
from shared.runtime.settings import Settings, libpq_url


async def make_project(settings: Settings, name: str) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    """A project with two platforms, made with the registry (what the pages themselves call)."""
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, name)
        n8n = await registry.create_platform(conn, project.id, "n8n orders", "n8n", workflow_id=f"wf-{name}")
        http = await registry.create_platform(conn, project.id, "Checkout API", "http_api")
    return project.id, {"n8n": n8n.id, "http": http.id}


async def post_trace(ingest: Service, key: str, body: dict[str, object]) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{ingest.url}/public/traces", json=body, headers={"x-api-key": key}) as resp:
            return resp.status


async def test_the_whole_api_key_flow(
    signed_in: Page, settings: Settings, ingest: Service, storage: Service
) -> None:
    page = signed_in
    name = f"keys-{uuid.uuid4().hex[:6]}"
    project_id, _platforms = await make_project(settings, name)

    # Open the project → API Keys in the project navigation.
    await page.goto("/projects")
    await page.get_by_role("link", name=name).click()
    await page.get_by_role("navigation", name=f"Project {name}").get_by_role("link", name="API Keys").click()
    await expect(page.get_by_text("No API keys yet")).to_be_visible()

    # Create API Key: a descriptive name, scoped to one platform.
    await page.get_by_label("Name").fill("Checkout web")
    await page.get_by_label("Checkout API").check()
    await expect(page.get_by_label("Only these platforms:")).to_be_checked()
    await page.get_by_role("button", name="Create API Key").click()

    # The key, once, with a copy button and the warning.
    await expect(page.get_by_role("heading", name="API key “Checkout web” created")).to_be_visible()
    await expect(page.get_by_text("you won't be able to see it again")).to_be_visible()
    key = await page.get_by_label("Your new API key").input_value()
    assert re.fullmatch(r"mibo_[0-9A-Za-z]{40}", key)
    answer = await page.reload()  # the page that showed it says no-store, and a reload shows nothing
    assert answer is not None and answer.headers["cache-control"] == "no-store"
    await expect(page.get_by_role("heading", name="This key was shown already")).to_be_visible()
    assert key not in await page.content()
    await page.go_back()  # back to the page with the key: it was not cached either
    assert key not in await page.content()

    # Copy works (the clipboard holds the key) — on a second key, since this one's page is gone.
    await page.goto(f"/projects/{project_id}/keys")
    await page.get_by_label("Name").fill("All of it")
    await page.get_by_role("button", name="Create API Key").click()
    second = await page.get_by_label("Your new API key").input_value()
    await page.get_by_role("button", name="Copy").click()
    await expect(page.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == second
    await page.get_by_role("link", name="Done: back to the API keys").click()

    # The list: masked keys, scope names, created, never used.
    rows = page.locator("#keys tbody tr")
    await expect(rows).to_have_count(2)
    web_row = rows.filter(has_text="Checkout web")
    await expect(web_row).to_contain_text(f"mibo_...{key[-4:]}")
    await expect(web_row).to_contain_text("Checkout API")
    await expect(rows.filter(has_text="All of it")).to_contain_text("All platforms")
    await expect(web_row.locator("td.last-used")).to_have_text("Never")
    assert key not in await page.content()

    # Use the key with real requests: last used changes (the storage worker flushes it).
    assert await post_trace(ingest, key, {"data": {"input": "hi", "output": "there"}}) == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await page.reload()
        if await web_row.locator("td.last-used").inner_text() != "Never":
            break
        await asyncio.sleep(0.5)
    await expect(web_row.locator("td.last-used")).to_have_text(re.compile(r"just now|seconds ago"))
    title = await web_row.locator("td.last-used time").get_attribute("title")
    assert title and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", title)  # the exact time on hover

    # Revoke, with confirmation; the row is gone and the ingest API refuses the key within a second.
    await web_row.get_by_role("link", name="Revoke Checkout web").click()
    await expect(page.get_by_role("heading", name="Revoke API key “Checkout web”?")).to_be_visible()
    await page.get_by_role("button", name="Revoke key").click()
    revoked_at = time.monotonic()
    await expect(page.get_by_role("status")).to_contain_text("API key “Checkout web” revoked")
    await expect(rows).to_have_count(1)
    await expect(rows.filter(has_text="Checkout web")).to_have_count(0)
    while (status := await post_trace(ingest, key, {"data": {"after": "revoke"}})) != 401:
        assert time.monotonic() - revoked_at < 1.0, f"revoked key still answered {status}"
        await asyncio.sleep(0.05)
    assert time.monotonic() - revoked_at < 1.0
    assert await post_trace(ingest, second, {"data": {"still": "fine"}}) == 202


async def test_a_key_whose_platforms_were_deleted_is_restricted_with_no_platform_left(
    signed_in: Page, settings: Settings
) -> None:
    page = signed_in
    name = f"scope-{uuid.uuid4().hex[:6]}"
    project_id, platforms = await make_project(settings, name)
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        await registry.create_key(conn, settings.key_pepper, project_id, "Orders only", [platforms["n8n"]])
    await page.goto(f"/projects/{project_id}/platforms")
    await page.get_by_role("link", name="Delete n8n orders").click()
    await expect(page.get_by_text("left with no platform")).to_be_visible()  # says what it does to keys
    await page.get_by_role("button", name="Delete platform").click()
    await page.get_by_role("navigation", name=f"Project {name}").get_by_role("link", name="API Keys").click()
    await expect(page.locator("#keys tbody tr").filter(has_text="Orders only")).to_contain_text(
        "restricted, no platform left"
    )
