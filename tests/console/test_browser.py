"""The console in a real browser: Playwright drives the system Chromium (Debian's package) headless.

Screenshots of each page land in test-artifacts/console/; with TETHER_UPDATE_SCREENSHOTS=1 they also
replace the README's (docs/images/console-*.png).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from conftest import Served
from tether.types import RunStatus

CHROMIUM = Path(os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]
HAVE_CHROMIUM = CHROMIUM.exists()
ARTIFACTS = ROOT / "test-artifacts" / "console"
README_IMAGES = ROOT / "docs" / "images"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        message = (
            f"no Chromium at {CHROMIUM}: apt-get install chromium (as .ci/run does) or set TETHER_CHROMIUM"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


async def signed_in(browser: Browser, served: Served, role: str, start: str = "/console/inbox") -> Page:
    page = await browser.new_page(viewport={"width": 1366, "height": 860})
    page.set_default_timeout(10_000)
    await page.goto(served.url + start)
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("API key").fill(served.secrets[role])
    await page.get_by_role("button", name="Sign in").click()
    return page


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    if os.environ.get("TETHER_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, README_IMAGES / f"console-{name}.png")


async def test_sign_in_answer_an_approval_and_see_the_run_resume(browser: Browser, served: Served) -> None:
    """Sign in, approve a waiting refund in the inbox, and watch its run page reach succeeded."""
    run = await served.start("desk", "ada", "acme")
    assert (await served.settled(run.id)).status == RunStatus.WAITING_HUMAN
    for principal in ("bob", "cy"):
        await served.start("echo", principal, "acme")
    page = await signed_in(browser, served, "acme")
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    question = page.get_by_role("article")
    await expect(question).to_contain_text("refund")
    await expect(question).to_contain_text("150")
    await shot(page, "inbox")
    await question.get_by_role("button", name="Approve", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("Answered 'approve'")
    await expect(page.get_by_text("Nothing waits for a person.")).to_be_visible()
    await page.goto(f"{served.url}/console/runs/{run.id}")
    # A run still going reloads its page by itself until it settles.
    await expect(page.locator("h1 .status")).to_have_text("succeeded", timeout=15_000)
    await expect(page.locator("tr.span.tool")).to_have_count(1)
    await shot(page, "run")


async def test_open_a_trace_and_read_a_spans_attributes(browser: Browser, served: Served) -> None:
    """The run page's waterfall has a bar per span; opening a span shows its GenAI attributes."""
    run = await served.start("desk", "ada", "acme")
    await served.settled(run.id)
    [question] = await served.runtime.inbox()
    await served.runtime.answer(question.id, "approve", by="test")
    assert (await served.settled(run.id)).status == RunStatus.SUCCEEDED
    page = await signed_in(browser, served, "acme", start=f"/console/runs/{run.id}")
    waterfall = page.locator("table.waterfall")
    await expect(waterfall.locator("rect.bar")).to_have_count(5)  # root, 2 chats, approval, tool
    await waterfall.get_by_text("execute_tool refund").click()
    await expect(waterfall).to_contain_text("gen_ai.tool.name")
    await expect(waterfall.get_by_role("img", name="execute_tool refund", exact=False)).to_be_visible()
    await page.locator("table.events").get_by_text("tool.result", exact=True).scroll_into_view_if_needed()
    await shot(page, "trace")


async def test_replay_a_dead_letter(browser: Browser, served: Served) -> None:
    """An operator replays a dead letter from its list; the run is queued and a worker finishes it."""
    run_id = await served.dead_letter("dee", "acme")
    page = await signed_in(browser, served, "operator", start="/console/dead-letters")
    row = page.get_by_role("row").filter(has_text=run_id)
    await expect(row).to_be_visible()
    await shot(page, "dead-letters")
    await row.get_by_role("button", name=f"Replay {run_id}").click()
    await expect(page.get_by_role("status")).to_contain_text("queued again")
    await expect(page.locator("h1 .status")).to_have_text("succeeded", timeout=15_000)
    assert (await served.runtime.store.get_run(run_id)).status == RunStatus.SUCCEEDED


async def test_a_wrong_key_is_told_and_cost_is_charted(browser: Browser, served: Served) -> None:
    """A wrong key gets an alert on the sign-in page; the operator's cost page draws a bar per customer."""
    for principal in ("ada", "ada", "bob"):
        await served.settled((await served.start("echo", principal, "acme")).id)
    await served.settled((await served.start("echo", "zed", "globex")).id)
    page = await browser.new_page(viewport={"width": 1366, "height": 860})
    await page.goto(served.url + "/console/login")
    await page.get_by_label("API key").fill("tth_wrong-key-wrong-key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not valid")
    await page.get_by_label("API key").fill(served.secrets["operator"])
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("link", name="Cost").click()
    customers = page.locator("section.chart").filter(has_text="Cost per customer")
    await expect(customers.locator("rect.bar")).to_have_count(3)
    await expect(page.locator("section.chart").filter(has_text="Cost per tenant")).to_contain_text("globex")
    await shot(page, "cost")
