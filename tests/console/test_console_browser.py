"""The console in a real browser: Debian's headless Chromium driven by Playwright's Python API (never
Playwright's own browser download). Login, a key created with its secret shown once, a chart drawn from real
usage, a budget edit. Screenshots go to pytest's temporary directory (test artefacts, not the repository)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.console.conftest import wait_for_usage
from tests.inprocess import InProcessGateway, in_process_gateway

TOKEN = "browser-admin-token"
CHROMIUM = os.environ.get("ODOCK_CHROMIUM", "/usr/bin/chromium")


def _require_browser() -> Any:
    """Playwright and Chromium, or a skip locally; under CI=true their absence fails."""
    reason = None
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        reason = "playwright is not installed (uv sync)"
    if reason is None and not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        reason = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true: the browser tests are required)")
        pytest.skip(reason)
    return async_playwright


@contextlib.asynccontextmanager
async def _served(gw: InProcessGateway) -> AsyncIterator[str]:
    """Serve the in-process gateway's app on a free 127.0.0.1 port for the browser."""
    server = uvicorn.Server(
        uvicorn.Config(gw.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_console_in_chromium(tmp_path: Path) -> None:
    async_playwright = _require_browser()
    import openai

    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with in_process_gateway(tmp_path, admin_token=TOKEN) as gw, _served(gw) as base:
        async with openai.AsyncOpenAI(
            api_key=gw.seeded["secret"], base_url=f"{base}/v1", max_retries=0
        ) as sdk:
            for _ in range(3):
                await sdk.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi"}]
                )
            stream = await sdk.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            async for _chunk in stream:
                pass
        await wait_for_usage(gw.gateway.store, 4)
        budget = await _create_budget(gw)

        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))

                # login: a wrong token is refused, the right one opens the overview
                await page.goto(f"{base}/console")
                await page.fill("#token", "wrong")
                await page.click("#login button")
                await page.wait_for_selector("#login-error:has-text('unauthorized')")
                await page.fill("#token", TOKEN)
                await page.click("#login button")
                await page.wait_for_selector("h1:has-text('Overview')")

                # a chart drawn from the rollups: the requests series has points, the tile counts the calls
                chart = page.locator("svg[aria-label='Requests and errors per hour']")
                await chart.wait_for()
                assert await chart.locator("circle").count() >= 1
                assert int(await chart.get_attribute("data-points") or 0) >= 1
                assert await page.locator(".tile", has_text="Requests").locator("b").inner_text() == "4"
                # time to first token, from the one streamed call
                ttft = page.locator("svg[aria-label^='Time to first token']")
                assert await ttft.locator("circle").count() >= 1
                assert (await page.locator(".tile", has_text="p50 TTFT").locator("b").inner_text()).endswith(
                    " ms"
                )
                await page.screenshot(path=str(shots / "overview.png"), full_page=True)

                # a key created in the console: its secret is shown once, never again
                await page.click("a[href='#/keys']")
                await page.wait_for_selector("#create-key")
                await page.fill("#create-key input[name=name]", "browser-key")
                await page.click("#create-key button[type=submit]")
                secret = await page.locator("#secret-value").inner_text()
                assert secret.startswith("sk-")
                await page.wait_for_selector("td:has-text('browser-key')")  # the list shows the new key
                await page.screenshot(path=str(shots / "key-created.png"), full_page=True)
                await page.reload()
                await page.wait_for_selector("td:has-text('browser-key')")
                assert secret not in await page.content()
                await page.click("td:has-text('browser-key')")
                await page.wait_for_selector("h1:has-text('Key browser-key')")
                assert secret not in await page.content()

                # a budget edit, with its burn-down chart
                await page.goto(f"{base}/console#/budgets")
                await page.click(f"td:has-text('{budget['name']}')")
                await page.wait_for_selector("#budget-edit")
                assert await page.locator("svg[aria-label^='Burn-down'] circle").count() >= 1
                await page.fill("#budget-edit input[name=amount_usd]", "12.5")
                await page.click("#budget-edit button[type=submit]")
                await page.wait_for_selector("#budget-edit .ok:has-text('$12.50')")
                await page.screenshot(path=str(shots / "budget-edited.png"), full_page=True)

                pages = {
                    "usage": "Usage explorer",
                    "models": "Providers",
                    "quotas": "Quotas",
                    "routing": "Routing policies",
                    "requests": "Request log",
                    "tail": "Live tail",
                }
                for name, title in pages.items():
                    await page.click(f"a[href='#/{name}']")
                    await page.wait_for_selector(f"#view h1:has-text('{title}')")
                    assert await page.locator("#view .error").count() == 0
                await page.wait_for_selector("#view td:has-text('gpt-test')")  # the tail lists the calls
                await page.screenshot(path=str(shots / "tail.png"), full_page=True)

                # the admin API reference, drawn from /admin/openapi.json: every operation of the document
                async with gw.client() as http:
                    doc = (
                        await http.get("/admin/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
                    ).json()
                operations = {
                    (method.upper(), path)
                    for path, item in doc["paths"].items()
                    for method in item
                    if method in ("get", "post", "put", "patch", "delete")
                }
                await page.click("a[href='#/api']")
                await page.wait_for_selector("#view h1:has-text('Odock admin API')")
                shown = await page.eval_on_selector_all(
                    "details.op", "els => els.map(e => [e.dataset.method, e.dataset.path])"
                )
                assert {tuple(x) for x in shown} == operations and len(shown) == len(operations)
                create = page.locator("details.op[data-method='POST'][data-path='/admin/keys']")
                await create.locator("summary").click()
                assert await create.locator("td code", has_text="organisation").count() >= 1
                assert await create.locator("pre").count() >= 1  # the request's example
                await create.locator("button.link").first.click()  # a jump to the body's schema
                assert await page.locator("details.schema[open]").count() == 1
                await page.screenshot(path=str(shots / "api-reference.png"), full_page=True)
                await page.fill("#view input[name=q]", "budget")
                await page.click("#view form button[type=submit]")
                await page.wait_for_selector("#view input[name=q][value='budget']")  # the page drawn again
                paths = await page.eval_on_selector_all("details.op", "els => els.map(e => e.dataset.path)")
                assert paths and all("budget" in path for path in paths)
                assert 0 < await page.locator("details.op").count() < len(operations)
                # no script error, no CSP violation (the 401s are the session probe and the wrong token)
                assert [e for e in errors if "401" not in e] == []
            finally:
                await browser.close()
        stored = await _budget_amount(gw, budget["id"])
        assert stored == 12_500_000_000
    assert sorted(p.name for p in shots.iterdir()) == [
        "api-reference.png",
        "budget-edited.png",
        "key-created.png",
        "overview.png",
        "tail.png",
    ]


async def _create_budget(gw: InProcessGateway) -> dict[str, Any]:
    from odock.admin.governance import admin_for
    from odock.state.service import to_json

    governance = admin_for(gw.gateway.store)
    budget = await governance.create_budget(
        {
            "name": "acme-monthly",
            "organisation": gw.seeded["org"],
            "period": "MONTHLY",
            "amount_usd": "5",
        }
    )
    result: dict[str, Any] = to_json(budget)
    return result


async def _budget_amount(gw: InProcessGateway, budget_id: str) -> int:
    from odock.admin.governance import admin_for

    return (await admin_for(gw.gateway.store).get_budget(budget_id)).amount_nanos
