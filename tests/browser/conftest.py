"""The console in a real browser: ``python -m console`` as a process beside the session's real
ingest API, router and storage worker (tests/conftest.py), driven by Playwright through Debian's
Chromium (``make tools`` installs it; never ``playwright install``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from shared.devstack.pipeline import Service, free_port, service_env
from shared.runtime.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


@dataclass
class Console:
    url: str
    service: Service
    admin_token: str


def start_console(settings: Settings, log_dir: Path, metrics: list[Service], **extra: str) -> Console:
    port = free_port()
    env = service_env(
        settings,
        CONSOLE_HOST="127.0.0.1",
        CONSOLE_PORT=str(port),
        CONSOLE_METRICS_URLS=",".join(f"{s.url}/metrics" for s in metrics),
        **extra,
    )
    log = log_dir / f"console-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "console"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    service = Service(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"console exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(service.url + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return Console(service.url, service, settings.admin_token)
        except OSError:
            pass
        time.sleep(0.2)
    service.stop()
    raise AssertionError(f"console not ready:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def console(
    settings: Settings, service_logs: Path, ingest: Service, router: Service, storage: Service
) -> Iterator[Console]:
    found = start_console(
        settings, service_logs, [ingest, router, storage], CONSOLE_SIGNIN_ATTEMPTS_PER_MINUTE="60"
    )
    yield found
    assert found.service.stop() == 0, found.service.log.read_text()[-3000:]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser, console: Console) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (no cookies) whose clipboard the page may write and read."""
    made = await browser.new_context(base_url=console.url, viewport={"width": 1280, "height": 900})
    await made.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.url)
    yield made
    await made.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    return await context.new_page()


async def sign_in(page: Page, console: Console) -> None:
    await page.goto("/signin")
    await page.get_by_label("Admin token").fill(console.admin_token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/projects")


@pytest.fixture
async def signed_in(page: Page, console: Console) -> Page:
    await sign_in(page, console)
    return page
