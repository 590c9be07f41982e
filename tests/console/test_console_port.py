"""The console on its own port (ODOCK_CONSOLE_PORT / `odock serve --console-port`), over real HTTP against a real
`odock serve` process: the console and the admin API answer there, /console on the main port is a 404, the
clients' routes stay on the main port only, and the process still stops cleanly."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.harness import GatewayProcess, free_port, seed_basic


async def test_console_on_its_own_port(tmp_path: Path, mock: Any) -> None:
    console_port = free_port()
    proc = GatewayProcess(tmp_path)
    service = await proc.open_service()
    try:
        seeded = await seed_basic(service, mock.base_url)
        proc.start("--console-port", str(console_port))
        console = f"http://127.0.0.1:{console_port}"
        async with (
            httpx.AsyncClient(base_url=proc.base_url) as main,
            httpx.AsyncClient(base_url=console) as side,
        ):
            # the main port: no console (404 before any token check), the admin API still there for the CLI
            for path in ("/console", "/console/static/console.js", "/console/api/overview"):
                response = await main.get(path)
                assert response.status_code == 404, path
                assert response.json()["error"]["code"] == "not_found"
            assert (await main.get("/admin/keys", headers=proc.admin_headers())).status_code == 200

            # the console's port: the page, a login, a chart's data, the admin API (by token and by session)
            page = await side.get("/console")
            assert page.status_code == 200 and "console.js" in page.text
            assert "default-src 'none'" in page.headers["content-security-policy"].replace('"', "'")
            login = await side.post("/console/login", json={"token": proc.admin_token})
            assert login.status_code == 200 and "HttpOnly" in login.headers["set-cookie"]
            keys = await side.get("/admin/keys", headers=proc.admin_headers())
            assert keys.status_code == 200 and keys.json()["data"][0]["id"] == seeded["key_id"]
            via_session = await side.get("/console/api/admin/keys")
            assert via_session.status_code == 200
            # the clients' routes are not served on the console's port
            assert (await side.get("/v1/health")).status_code in (401, 404)

            # traffic on the main port reaches the console's charts
            async with openai.AsyncOpenAI(
                api_key=seeded["secret"], base_url=f"{proc.base_url}/v1", max_retries=0
            ) as sdk:
                await sdk.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": "hi"}]
                )
            for _ in range(100):
                overview = (await side.get("/console/api/overview")).json()
                if overview["totals"]["requests"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert overview["totals"]["requests"] == 1
        assert proc.stop() in (0, -signal.SIGTERM)
    finally:
        proc.stop()
        await service.store.close()


def test_console_port_must_differ_from_the_main_port(monkeypatch: Any) -> None:
    import pytest

    from odock.settings import load_settings

    monkeypatch.setenv("HTTP_PORT", "8080")
    monkeypatch.setenv("ODOCK_CONSOLE_PORT", "8080")
    with pytest.raises(SystemExit, match="ODOCK_CONSOLE_PORT"):
        load_settings()
    monkeypatch.setenv("ODOCK_CONSOLE_PORT", "8081")
    assert load_settings().console_port == 8081
