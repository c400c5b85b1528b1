"""Every user-supplied string is shown as text: platform and key names, trace payloads and
dead-letter details with ``<script>``, quotes and ``\\u0000``. A page that executed any of them
would open a dialog (none may) or add a script element (only console.js is allowed); the CSP
would block an inline one anyway, and the browser reports that too."""

from __future__ import annotations

import time
import uuid

import aiohttp
import psycopg
from playwright.async_api import Page, expect

from shared import registry
from shared.devstack.pipeline import Service
from shared.runtime.settings import Settings, libpq_url
from tests.browser.test_console_dead_letters import reload_until

HOSTILE = "<script>alert(1)</script> \"double\" 'single' <img src=x onerror=alert(2)>"


async def test_names_payloads_and_details_are_escaped(
    signed_in: Page, settings: Settings, ingest: Service, router: Service, storage: Service
) -> None:
    page = signed_in
    dialogs: list[str] = []
    violations: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)

    async def only_our_script() -> None:
        assert await page.locator("script").count() == 1
        assert await page.locator("script").get_attribute("src") == "/static/console.js"
        assert await page.locator("img").count() == 0

    # A project, a platform and a key named with markup, through the forms.
    name = f"{HOSTILE} {uuid.uuid4().hex[:6]}"
    await page.goto("/projects")
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_role("button", name="Create project").click()
    await expect(page.get_by_role("heading", name="Platforms")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text(HOSTILE)
    project_id = page.url.split("/projects/")[1].split("/")[0]
    await page.get_by_label("Name", exact=True).fill(HOSTILE)
    await page.get_by_label("Type").select_option(label="HTTP API")
    await page.get_by_label("OTLP service name").fill("svc\"'<b>")
    await page.get_by_role("button", name="Add platform").click()
    row = page.get_by_role("row").filter(has_text="HTTP API")
    await expect(row.locator("td").first).to_have_text(HOSTILE)
    await expect(row).to_contain_text("svc\"'<b>")
    await only_our_script()

    # \u0000 in a name: refused next to the field, and shown back as the text \u0000.
    await page.get_by_label("Name", exact=True).evaluate("e => e.value = 'nul\\u0000name'")
    await page.get_by_role("button", name="Add platform").click()
    await expect(page.locator("#name-error")).to_have_text("name must not contain control characters")
    assert await page.get_by_label("Name", exact=True).input_value() == "nul\\u0000name"

    await page.get_by_role("navigation", name=f"Project {name}").get_by_role("link", name="API Keys").click()
    await page.get_by_label("Name (what it is for").fill(HOSTILE)
    await page.get_by_role("button", name="Create API Key").click()
    key = await page.get_by_label("Your new API key").input_value()
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"API key “{HOSTILE}” created")
    await page.get_by_role("link", name="Done: back to the API keys").click()
    await expect(page.locator("#keys tbody tr td").first).to_have_text(HOSTILE)
    await only_our_script()

    # A payload that tries to close the viewer and run a script; and a \u0000 PostgreSQL refuses.
    payload = {"data": {"html": "</pre><script>alert(3)</script>", "quote": "\"'"}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{ingest.url}/public/traces", json=payload, headers={"x-api-key": key}) as resp:
            assert resp.status == 202
            stored_id = (await resp.json())["data"]["id"]
        async with http.post(
            f"{ingest.url}/public/traces",
            data=b'{"data": {"text": "nul \\u0000 <script>alert(4)</script>"}}',
            headers={"x-api-key": key, "Content-Type": "application/json", "x-request-id": 'nul-"<x>'},
        ) as resp:
            assert resp.status == 202
            rejected_id = (await resp.json())["data"]["id"]

    await page.goto(f"/projects/{project_id}/traces?ref={stored_id}")
    await reload_until(page, page.locator("article.receipt.stored"))
    await expect(page.locator("pre.payload").first).to_contain_text(
        '"html": "</pre><script>alert(3)</script>"'
    )
    await only_our_script()

    await page.goto(f"/projects/{project_id}/traces?ref={rejected_id}")
    dead = page.locator("article.receipt.dead_lettered")
    await reload_until(page, dead)
    await expect(dead).to_contain_text("storage_rejected")
    await expect(dead).to_contain_text('nul-"<x>')
    await only_our_script()

    await page.goto(f"/projects/{project_id}/dead-letters")
    await expect(page.locator("li.letter")).to_contain_text('nul-"<x>')
    await only_our_script()

    # A lookup for an id with a NUL in it: a precise refusal, not a server error.
    answer = await page.goto(f"/projects/{project_id}/traces?ref=a%00b")
    assert answer is not None and answer.status == 400
    await expect(page.locator("#ref-error")).to_have_text(
        "An id has no control characters (such as \\u0000)."
    )
    await expect(page.get_by_label("Trace id or external id")).to_have_value("a\\u0000b")

    # A project deleted with its typed confirmation, which names what it takes with it.
    await page.goto(f"/projects/{project_id}/delete")
    await expect(page.locator(".card.danger")).to_contain_text("1 platform")
    await expect(page.locator(".card.danger")).to_contain_text("1 API key")
    await page.get_by_label("Type the project's name").fill("not it")
    await page.get_by_role("button", name="Delete project and everything in it").click()
    await expect(page.get_by_role("alert")).to_have_text("Type the project's name exactly to confirm.")
    await page.get_by_label("Type the project's name").fill(name)
    await page.get_by_role("button", name="Delete project and everything in it").click()
    await expect(page.get_by_role("status")).to_contain_text("deleted")
    await only_our_script()
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        assert name not in [p.name for p in await registry.list_projects(conn)]

    assert dialogs == []
    assert violations == []
    assert time.monotonic()  # the test ran to the end
