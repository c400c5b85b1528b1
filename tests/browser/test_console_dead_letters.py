"""The dead-letter story in the browser alone, against the real pipeline: an ambiguous trace
arrives → the live counts show it → the operator reads why → sets the missing workflow id on the
platform page (after the admin API's conflict message for a taken one) → dry run says it would
route → replay → the trace lookup shows it stored; a second replay is skipped."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import aiohttp
import psycopg
from playwright.async_api import Locator, Page, expect

from shared import registry
from shared.devstack.pipeline import Service
from shared.runtime.settings import Settings, libpq_url
from tests.browser.conftest import Console


async def reload_until(page: Page, locator: Locator, timeout: float = 30.0) -> None:
    """Reload ``page`` until ``locator`` shows (what arrives through Kafka takes a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await locator.count():
            return
        await asyncio.sleep(0.5)
        await page.reload()
    await expect(locator.first).to_be_visible()


async def test_ambiguous_trace_fixed_dry_run_replayed_and_stored(
    signed_in: Page, settings: Settings, ingest: Service, router: Service, storage: Service
) -> None:
    page = signed_in
    suffix = uuid.uuid4().hex[:6]
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"dlq-{suffix}")
        await registry.create_platform(conn, project.id, "n8n A", "n8n")
        await registry.create_platform(conn, project.id, "n8n B", "n8n", workflow_id=f"wf-b-{suffix}")
        key = (await registry.create_key(conn, settings.key_pepper, project.id, "Both n8n")).key

    await page.goto(f"/projects/{project.id}/dead-letters")
    await expect(page.get_by_text("No open dead letters")).to_be_visible()
    total = page.locator("[data-total]")
    await expect(total).to_have_text("0")

    # An n8n execution of workflow "wf-a", which no platform has yet: two n8n platforms could take it.
    external_id = f"exec-{suffix}"
    body = {"data": {"input": "order 42", "output": "shipped"}, "metadata": {"workflowId": f"wf-a-{suffix}"}}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{ingest.url}/public/traces", json=body, headers={"x-api-key": key, "x-request-id": external_id}
        ) as resp:
            assert resp.status == 202
            trace_id = (await resp.json())["data"]["id"]

    # The counts update by themselves (no reload): 1 open, by reason, by key, with the oldest's age.
    await expect(total).to_have_text("1", timeout=30_000)
    await expect(page.locator("#by-reason tbody")).to_contain_text("platform_ambiguous")
    await expect(page.locator("#by-key tbody")).to_contain_text("Both n8n")
    await expect(page.locator("#by-platform tbody")).to_contain_text("no platform")
    await expect(page.locator("#by-reason tbody td").nth(2)).to_have_text(re.compile(r"^\d+ s$"))

    # Why: the detail sentence, the candidates by name, and what to do.
    await page.reload()
    letter = page.locator("li.letter").filter(has_text=trace_id)
    await expect(letter).to_contain_text("platform_ambiguous")
    await expect(letter).to_contain_text(f"wf-a-{suffix}")
    await expect(letter.locator("dd").filter(has_text="n8n A")).to_contain_text("n8n B")
    await expect(letter).to_contain_text("Set the workflow id")

    # Fix it on the platform page: a workflow id another platform has is refused next to the field.
    await (
        page.get_by_role("navigation", name=f"Project {project.name}")
        .get_by_role("link", name="Platforms")
        .click()
    )
    await page.get_by_role("link", name="Edit n8n A").click()
    await page.get_by_label("Workflow id").fill(f"wf-b-{suffix}")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("#workflow_id-error")).to_have_text(
        re.compile(rf'workflow_id "wf-b-{suffix}" is already used by n8n platform "n8n B"')
    )
    await expect(page.get_by_label("Workflow id")).to_have_attribute("aria-invalid", "true")
    await page.get_by_label("Workflow id").fill(f"wf-a-{suffix}")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("status")).to_have_text("Platform “n8n A” saved.")
    await expect(page.get_by_role("row").filter(has_text="n8n A")).to_contain_text(f"wf-a-{suffix}")

    # Dry run: the router would now route it to n8n A.
    await (
        page.get_by_role("navigation", name=f"Project {project.name}")
        .get_by_role("link", name="Dead letters")
        .click()
    )
    await page.get_by_label(re.compile("Select dead letter")).first.check()
    await page.get_by_role("button", name="Dry run the selection").click()
    await expect(page.get_by_role("heading", name="Dry run")).to_be_visible()
    plan = page.locator("#plan tbody tr")
    await expect(plan).to_have_count(1)
    await expect(plan.locator("td.now")).to_have_text("route to n8n A (hint)")
    await expect(plan.locator("td.action")).to_have_text("replay")

    # Replay: replayed, then stored.
    await page.get_by_role("button", name="Replay 1 dead letter(s)").click()
    await expect(page.get_by_role("heading", name="Replay done")).to_be_visible()
    await expect(page.locator("[data-replayed]")).to_have_text("1")
    await expect(page.locator("[data-skipped]")).to_have_text("0")
    await plan.get_by_role("link").click()  # the trace's lookup
    stored = page.locator("article.receipt.stored")
    await reload_until(page, stored)
    await expect(stored.get_by_role("heading", level=2)).to_have_text("stored on n8n A")
    await expect(stored.locator("pre.payload").first).to_contain_text('"input": "order 42"')
    await expect(stored).to_contain_text("resolved")  # its dead-letter history

    # The same by external id; and a second replay of the letter is skipped, not repeated.
    await page.get_by_label("Trace id or external id").fill(external_id)
    await page.get_by_role("button", name="Look up").click()
    await expect(page.locator("article.receipt.stored")).to_have_count(1)
    await page.goto(f"/projects/{project.id}/dead-letters?state=all")
    await expect(page.locator("li.letter.state-resolved")).to_have_count(1)
    await expect(page.locator("[data-total]")).to_have_text("1")
    await page.goto(f"/projects/{project.id}/dead-letters")
    await expect(page.get_by_text("No open dead letters")).to_be_visible()
    await page.goto(f"/projects/{project.id}/dead-letters?state=all")
    await page.get_by_label("Select all shown").check()
    await page.get_by_role("button", name="Dry run the selection").click()
    await expect(page.locator("#plan td.action")).to_have_text("skipped: already replayed")
    await expect(page.get_by_role("button", name=re.compile("Replay"))).to_have_count(0)


async def test_trace_lookup_unknown_and_recent_traces(
    signed_in: Page, settings: Settings, ingest: Service, router: Service, storage: Service
) -> None:
    page = signed_in
    suffix = uuid.uuid4().hex[:6]
    async with await psycopg.AsyncConnection.connect(
        libpq_url(settings.database_url), autocommit=True
    ) as conn:
        project = await registry.create_project(conn, f"lookup-{suffix}")
        platform = await registry.create_platform(conn, project.id, "HTTP", "http_api")
        key = (await registry.create_key(conn, settings.key_pepper, project.id, "k")).key
    ids = []
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            async with http.post(
                f"{ingest.url}/public/traces", json={"data": {"i": i}}, headers={"x-api-key": key}
            ) as resp:
                assert resp.status == 202
                ids.append((await resp.json())["data"]["id"])

    await page.goto(f"/projects/{project.id}/traces")
    await page.get_by_label("Trace id or external id").fill(str(uuid.uuid4()))
    await page.get_by_role("button", name="Look up").click()
    await expect(page.get_by_role("heading", name="Not known (yet)")).to_be_visible()

    await page.get_by_label("Platform").select_option(label="HTTP")
    await page.get_by_role("button", name="Show recent traces").click()
    recent = page.locator("#recent tbody tr")
    deadline = time.monotonic() + 30
    while await recent.count() < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        await page.reload()
    await expect(recent).to_have_count(3)
    await expect(recent.first).to_contain_text(ids[-1])  # newest first
    await recent.first.get_by_role("link").click()
    await expect(page.locator("article.receipt.stored").get_by_role("heading", level=2)).to_have_text(
        "stored on HTTP"
    )
    await expect(page.locator("pre.payload").first).to_contain_text('"i": 2')
    assert platform.id


async def test_pipeline_page_shows_rates_lag_and_the_reconciliation(
    signed_in: Page, console: Console
) -> None:
    page = signed_in
    await page.goto("/pipeline")
    await expect(page.locator("#services li.ok")).to_have_count(3)  # ingest, router, storage answered
    # The page polls: after two readings every rate is a number, every lag a count.
    await expect(page.locator("tr[data-rate='accepted'] td.rate")).to_have_text(
        re.compile(r"^\d+\.\d$"), timeout=10_000
    )
    for stage in ("router", "storage", "dead-letter index"):
        await expect(page.locator(f"tr[data-stage='{stage}'] td.lag")).to_have_text(re.compile(r"^\d+$"))
    await expect(page.locator("#checks li")).to_have_count(2)
    await expect(page.locator("#reconciles")).to_have_text(re.compile(r"^(Yes|Not right now)"))
    assert (await page.locator("tr[data-rate='accepted'] td.total").inner_text()).isdigit()
