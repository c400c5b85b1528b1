"""Signing in and out, and that nothing of the console is reachable without a session: the
redirect to the sign-in page, the cookie's flags, the security headers, the CSRF refusal, the
sign-in rate limit and session expiry."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from playwright.async_api import Browser, Page, expect

from shared.devstack.pipeline import Service
from shared.runtime.settings import Settings
from tests.browser.conftest import Console, sign_in, start_console


async def test_sign_in_and_out(page: Page, console: Console) -> None:
    await page.goto("/projects/00000000-0000-0000-0000-000000000000/keys")
    await expect(page).to_have_url(re.compile(r"/signin\?next="))
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    await page.get_by_label("Admin token").fill("not-the-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")

    await page.get_by_label("Admin token").fill(console.admin_token)
    await page.get_by_role("button", name="Sign in").click()
    # Back where it was headed: a project that does not exist is a 404 page, inside the console.
    await expect(page.get_by_role("heading", name="Not Found")).to_be_visible()
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies["mibo_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/"
    assert not session[
        "secure"
    ]  # plain HTTP here; behind TLS it is Secure (tests/unit/test_console_security.py)

    await page.goto("/projects")
    await expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("status")).to_have_text("You signed out.")
    await page.goto("/projects")
    await expect(page).to_have_url(re.compile(r"/signin"))

    # The old cookie is worth nothing after signing out, even if replayed.
    async with aiohttp.ClientSession(cookies={"mibo_console": session["value"]}) as http:
        async with http.get(f"{console.url}/projects", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/signin")
        async with http.get(f"{console.url}/pipeline.json") as resp:
            assert resp.status == 401


async def test_security_headers_and_csrf_refusal(signed_in: Page, console: Console) -> None:
    page = signed_in
    answer = await page.goto("/projects")
    assert answer is not None
    headers = answer.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"

    # A form whose CSRF token was tampered with is refused, and nothing is created.
    await page.get_by_label("Name").fill("csrf-victim")
    await page.locator("form[action='/projects'] input[name=csrf_token]").evaluate("e => e.value = 'forged'")
    await page.get_by_role("button", name="Create project").click()
    await expect(page.get_by_role("heading", name="Forbidden")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("CSRF")
    await page.goto("/projects")
    await expect(page.get_by_role("link", name="csrf-victim")).to_have_count(0)

    # Another site's form (a cross-site POST with the session cookie, no token) is refused too.
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    async with aiohttp.ClientSession(cookies=cookies) as http:
        async with http.post(f"{console.url}/projects", data={"name": "csrf-victim"}) as resp:
            assert resp.status == 403
        async with http.post(
            f"{console.url}/projects",
            data={"name": "csrf-victim", "csrf_token": "x"},
            headers={"Origin": "https://evil.example"},
        ) as resp:
            assert resp.status == 403
    await page.goto("/projects")
    await expect(page.get_by_role("link", name="csrf-victim")).to_have_count(0)


async def test_sign_in_rate_limit_and_session_expiry(
    browser: Browser, settings: Settings, service_logs: Path, ingest: Service
) -> None:
    """A console with a limit of 3 sign-ins a minute and 3-second sessions."""
    strict = start_console(
        settings,
        service_logs,
        [ingest],
        CONSOLE_SIGNIN_ATTEMPTS_PER_MINUTE="3",
        CONSOLE_SESSION_SECONDS="3",
    )
    context = await browser.new_context(base_url=strict.url)
    try:
        page = await context.new_page()
        await sign_in(page, strict)  # attempt 1
        await page.goto("/projects")
        await expect(page.get_by_role("heading", name="Projects")).to_be_visible()
        await asyncio.sleep(3.5)
        await page.goto("/projects")  # the session expired
        await expect(page).to_have_url(re.compile(r"/signin"))
        for _ in range(2):  # attempts 2 and 3: wrong
            await page.get_by_label("Admin token").fill("wrong")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
        await page.get_by_label("Admin token").fill(strict.admin_token)  # attempt 4: refused, even right
        answer_status: list[int] = []
        page.on("response", lambda r: answer_status.append(r.status) if r.request.method == "POST" else None)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_contain_text("Too many sign-in attempts")
        assert answer_status == [429]
    finally:
        await context.close()
        assert strict.service.stop() == 0
