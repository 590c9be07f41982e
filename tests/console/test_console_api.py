"""The console over HTTP, in process: login with the admin token, the session cookie's flags, CSRF on every
change, the security headers, logout, the admin API through the session, and charts fed by real SDK calls."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from odock.console.auth import CONTENT_SECURITY_POLICY, Sessions
from tests.console.conftest import wait_for_usage
from tests.inprocess import InProcessGateway, in_process_gateway

TOKEN = "admin-token-for-console-tests"


async def _login(client: httpx.AsyncClient) -> str:
    response = await client.post("/console/login", json={"token": TOKEN})
    assert response.status_code == 200, response.text
    return str(response.json()["csrf"])


@pytest.fixture()
async def gw(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with in_process_gateway(tmp_path, admin_token=TOKEN) as gateway:
        yield gateway


async def test_page_and_assets_carry_a_strict_policy_and_no_inline_script(gw: InProcessGateway) -> None:
    async with gw.client() as client:
        page = await client.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert (
            "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
            and "script-src 'self'" in CONTENT_SECURITY_POLICY
        )
        assert (
            page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        )
        # every script is a file of ours: no inline code, no other origin
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
        assert scripts and all(
            'src="/console/static/' in attrs and not body.strip() for attrs, body in scripts
        )
        assert "http://" not in page.text and "https://" not in page.text
        js = await client.get("/console/static/console.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "https://" not in js.text.replace("http://www.w3.org/2000/svg", "")
        assert (await client.get("/console/static/..%2Fapp.py")).status_code == 404
        assert (await client.get("/console/static/nothing.js")).status_code == 404


async def test_login_sets_a_strict_http_only_cookie_and_a_wrong_token_gets_none(gw: InProcessGateway) -> None:
    async with gw.client() as client:
        assert (await client.get("/console/api/overview")).status_code == 401
        wrong = await client.post("/console/login", json={"token": "nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        assert "set-cookie" not in wrong.headers
        assert (await client.post("/console/login", json={})).status_code == 401
        ok = await client.post("/console/login", json={"token": TOKEN})
        cookie = ok.headers["set-cookie"]
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=28800"):
            assert flag in cookie
        assert TOKEN not in cookie
        session = await client.get("/console/api/session")
        assert session.status_code == 200 and session.json()["csrf"] == ok.json()["csrf"]
        assert (await client.get("/console/api/overview")).status_code == 200
        # a cross-site login attempt
        cross = await client.post(
            "/console/login", json={"token": TOKEN}, headers={"origin": "https://evil.example"}
        )
        assert cross.status_code == 403


async def test_every_change_needs_the_sessions_csrf_token(gw: InProcessGateway) -> None:
    async with gw.client() as client:
        csrf = await _login(client)
        body = {"organisation": "acme", "name": "from-console"}
        missing = await client.post("/console/api/admin/keys", json=body)
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed"
        wrong = await client.post("/console/api/admin/keys", json=body, headers={"x-csrf-token": "x" + csrf})
        assert wrong.status_code == 403
        cross = await client.post(
            "/console/api/admin/keys",
            json=body,
            headers={"x-csrf-token": csrf, "origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        created = await client.post("/console/api/admin/keys", json=body, headers={"x-csrf-token": csrf})
        assert created.status_code == 201 and created.json()["secret"].startswith("sk-")
        again = await client.get(f"/console/api/admin/keys/{created.json()['id']}")
        assert again.status_code == 200 and "secret" not in again.json()
        # the admin API's own validation and errors come through as they are
        bad = await client.post("/console/api/admin/keys", json={"name": "x"}, headers={"x-csrf-token": csrf})
        assert bad.status_code == 400 and "error" in bad.json()
        assert (await client.post("/console/logout")).status_code == 403  # logout is a change too


async def test_logout_ends_the_session_and_forged_or_expired_cookies_are_refused(
    gw: InProcessGateway,
) -> None:
    async with gw.client() as client:
        csrf = await _login(client)
        cookie = client.cookies["odock_console"]
        out = await client.post("/console/logout", headers={"x-csrf-token": csrf})
        assert out.status_code == 204 and "Max-Age=0" in out.headers["set-cookie"]
    async with gw.client() as replay:
        replay.cookies.set("odock_console", cookie, path="/console")
        assert (await replay.get("/console/api/session")).status_code == 401
        expires, nonce, signature = cookie.split(".")
        forged = f"{int(expires) + 10**6}.{nonce}.{signature}"
        replay.cookies.set("odock_console", forged, path="/console")
        assert (await replay.get("/console/api/session")).status_code == 401
    sessions = Sessions(TOKEN, lifetime_s=60)
    value, _ = sessions.issue(now=1000.0)
    assert sessions.check(value, now=1030.0) is not None
    assert sessions.check(value, now=1061.0) is None
    assert Sessions("another-token").check(value, now=1030.0) is None


async def test_console_is_off_with_the_admin_api(tmp_path: Path) -> None:
    async with in_process_gateway(tmp_path) as gw, gw.client() as client:
        response = await client.get("/console")
        assert response.status_code == 404 and response.json()["error"]["code"] == "admin_disabled"


async def test_calls_show_up_in_charts_and_the_request_log_without_prompt_text(gw: InProcessGateway) -> None:
    import openai

    secret = gw.seeded["secret"]
    sdk = openai.AsyncOpenAI(api_key=secret, base_url="http://gateway.test/v1", http_client=gw.sdk_client())
    prompt = "console-canary-prompt-text"
    for _ in range(2):
        await sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": prompt}])
    # a streamed call: its time to first token reaches the overview's TTFT plot
    stream = await sdk.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": prompt}], stream=True
    )
    async for _chunk in stream:
        pass
    await wait_for_usage(gw.gateway.store, 3)
    async with gw.client() as client:
        await _login(client)
        overview = (await client.get("/console/api/overview")).json()
        assert overview["totals"]["requests"] == 3 and overview["series"][-1]["requests"] == 3
        assert overview["totals"]["ttft_count"] == 1 and overview["series"][-1]["ttft_count"] == 1
        assert overview["series"][-1]["ttft_p50_ms"] is not None
        usage = (await client.get("/console/api/usage?group_by=key")).json()
        assert usage["data"][0]["requests"] == 3 and usage["data"][0]["name"]
        assert usage["data"][0]["ttft_count"] == 1
        csv = await client.get("/console/api/usage.csv?group_by=model")
        assert csv.status_code == 200 and "gpt-test" in csv.text
        log = (await client.get("/console/api/records?limit=2")).json()
        assert len(log["data"]) == 2 and log["next"]
        rest = (await client.get("/console/api/records", params={"before": log["next"]})).json()
        assert len(rest["data"]) == 1 and rest["next"] is None
        detail = await client.get(f"/console/api/records/{log['data'][0]['id']}")
        assert detail.status_code == 200 and detail.json()["model"] == "gpt-test"
        assert prompt not in detail.text and prompt not in (await client.get("/console/api/records")).text
        assert (await client.get("/console/api/records?before=garbage")).status_code == 400
        assert (await client.get("/console/api/usage?group_by=prompt")).status_code == 400
        assert (await client.get("/console/api/records/nope")).status_code == 404
