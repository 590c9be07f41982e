"""Fuzz every route of a live gateway (backed by the mock provider) over real HTTP: bodies shaped like each
dialect's request with wrong-typed fields, byte-level mutations (bad UTF-8, deep nesting, truncation, …), unary
and streamed, and the admin API. No answer may be a 5xx other than the documented upstream/dependency ones, every
error is shaped for the route's SDK, and the process is alive, answering and has logged no traceback afterwards.

Bounded and reproducible: derandomized, a fixed number of examples per route (the whole file runs in well under
30 s). `ODOCK_FUZZ_SCALE=20` multiplies the examples for a longer local run.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz import strategies as fz
from tests.harness import GatewayProcess, seed_basic

SCALE = float(os.environ.get("ODOCK_FUZZ_SCALE", "1"))
# the only 5xx a client may see here: the upstream refused a fuzzed body (the documented 503s mean a dependency is
# down, and the store is up: a 503 here would be a bad input mistaken for an outage)
DOCUMENTED_5XX = {502: {"upstream_error"}}


def fuzz_settings(examples: int) -> settings:
    # no shrinking: over HTTP it takes minutes, and the failure message already names the route, the request and
    # the answer (derandomized, the same example comes back on every run)
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- the error shapes each SDK reads (see tests/dialects/test_error_bodies.py) -----------------------------------


def openai_code(body: Any, status: int) -> str:
    """The openai SDK reads `error.message`, `error.type`, `error.code`."""
    err = body["error"]
    assert isinstance(err["message"], str) and isinstance(err["type"], str), body
    return str(err["code"])


def anthropic_code(body: Any, status: int) -> str:
    """The anthropic SDK reads `{"type": "error", "error": {"type", "message"}}`."""
    assert body["type"] == "error", body
    err = body["error"]
    assert isinstance(err["type"], str) and isinstance(err["message"], str), body
    return str(err["code"])


def gemini_code(body: Any, status: int) -> str:
    """google-genai reads `error.code` (the HTTP status), `error.message`, `error.status`."""
    err = body["error"]
    assert err["code"] == status and isinstance(err["message"], str) and isinstance(err["status"], str), body
    return str(err["details"][0]["reason"])


def admin_code(body: Any, status: int) -> str:
    """The admin API's `{"error": {"code", "message"}}`."""
    err = body["error"]
    assert isinstance(err["message"], str), body
    return str(err["code"])


Shape = Callable[[Any, int], str]


def check(resp: httpx.Response, shape: Shape) -> None:
    """No undocumented 5xx; an error body is JSON in the route's shape; a success is a complete answer."""
    status = resp.status_code
    where = f"{resp.request.method} {resp.request.url.path} -> {status}: {resp.text[:300]!r}"
    if status < 400:
        if status != 204 and "json" in resp.headers.get("content-type", "") and not resp.request.url.path.endswith(
                ":streamGenerateContent"):
            json.loads(resp.content)
        return
    try:
        body = json.loads(resp.content)
    except ValueError:
        raise AssertionError(f"error body is not JSON: {where}") from None
    try:
        code = shape(body, status)
    except (KeyError, TypeError, IndexError, AssertionError) as exc:
        raise AssertionError(f"error body not shaped for the route's SDK ({exc!r}): {where}") from None
    assert status < 500 or code in DOCUMENTED_5XX.get(status, ()), f"undocumented {status} {code}: {where}"


# --- the routes ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    path: str
    shape: Shape
    bodies: st.SearchStrategy[dict[str, Any]]
    # streams are asked with `"stream": true` in the body, or (Gemini) on other paths
    stream_paths: tuple[str, ...] = ()


GEMINI = "/v1beta/models/gemini-test"
LLM_ROUTES = [
    Route("/v1/llm/chat", openai_code,
          fz.chat_body(["gpt-test", "claude-test", "gemini-test", "vllm-test"], unified=True)),
    Route("/v1/chat/completions", openai_code, fz.chat_body(["gpt-test"])),
    Route("/v1/responses", openai_code, fz.responses_body("gpt-test")),
    Route("/v1/embeddings", openai_code, fz.embeddings_body("embed-test")),
    Route("/v1/images/generations", openai_code, fz.IMAGES_BODY),
    Route("/v1/messages", anthropic_code, fz.ANTHROPIC_BODY),
    Route(f"{GEMINI}:generateContent", gemini_code, fz.GEMINI_BODY,
          (f"{GEMINI}:streamGenerateContent?alt=sse", f"{GEMINI}:streamGenerateContent")),
    Route("/v1/vllm/chat/completions", openai_code, fz.chat_body(["vllm-test"])),
    Route("/v1/vllm/completions", openai_code, fz.COMPLETIONS_BODY),
    Route("/v1/vllm/responses", openai_code, fz.responses_body("vllm-test")),
    Route("/v1/vllm/embeddings", openai_code, fz.embeddings_body("vllm-test")),
    *(Route(f"/v1/vllm/{name}", openai_code, body) for name, body in fz.VLLM_BODIES.items()),
    Route("/v1/vllm/models", openai_code, fz.obj({}, {"model": st.just("vllm-test")})),
]
MULTIPART_ROUTES = [
    ("/v1/images/edits", "image-test", "image"),
    ("/v1/images/variations", "image-test", "image"),
    ("/v1/vllm/audio/transcriptions", "vllm-whisper", "file"),
    ("/v1/vllm/audio/translations", "vllm-whisper", "file"),
]


@pytest.fixture(scope="module")
def fuzz_proc(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    return GatewayProcess(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
async def refs(fuzz_proc: GatewayProcess, mock: Any) -> AsyncIterator[dict[str, Any]]:
    """The basic catalogue (org `acme`, every provider type on the mock, a granted key), and an org `zeta` whose
    items the admin fuzz creates under (by name) and patches (by id, which a rename cannot break)."""
    service = await fuzz_proc.open_service()
    try:
        seeded = await seed_basic(service, mock.base_url)
        # generous limits, so that fuzzed bodies go through every governance gate without being stopped by one
        await service.update_organisation("acme", {"policies": {"ratelimit": {
            "requests": {"per_second": 100_000, "per_minute": 1_000_000, "burst": 100_000},
            "tokens": {"per_minute": 10**12}, "concurrency": {"max": 1000},
            "payload": {"max_request_bytes": 10**8, "max_tokens": 10**9}}}})
        ids: dict[str, Any] = {"secret": seeded["secret"]}
        await service.create_organisation({"name": "zeta"})
        ids["organisations"] = (await service.create_organisation({"name": "zeta-patch"})).id
        for name in ("zeta-provider", "zeta-provider-2"):
            provider = await service.create_provider({"organisation": "zeta", "name": name, "type": "openai",
                                                      "base_url": f"{mock.base_url}/v1", "api_key": "sk-x"})
        ids["providers"] = provider.id
        for name in ("zeta-model", "zeta-model-2"):
            model = await service.create_model({"organisation": "zeta", "name": name, "provider": "zeta-provider",
                                                "slug": "gpt-4o-mini", "type": "chat"})
        ids["models"] = model.id
        ids["teams"] = (await service.create_team({"organisation": "zeta", "name": "zeta-team"})).id
        ids["users"] = (await service.create_user({"organisation": "zeta", "email": "z@zeta.test"})).id
        ids["keys"] = (await service.create_key({"organisation": "zeta", "name": "zeta-key",
                                                 "models": ["zeta-model"]})).key.id
        yield ids
    finally:
        await service.store.close()


@pytest.fixture(scope="module")
def live(fuzz_proc: GatewayProcess, refs: dict[str, Any]) -> Iterator[GatewayProcess]:
    """One gateway process for the whole module; a budget and a quota on each organisation (never reached)."""
    fuzz_proc.start()
    with httpx.Client(base_url=fuzz_proc.base_url, headers=fuzz_proc.admin_headers(), timeout=15) as client:
        for org in ("acme", "zeta"):
            for kind, body in (("budgets", {"name": "b", "organisation": org, "amount_usd": "1000000"}),
                               ("quotas", {"name": "q", "organisation": org, "metric": "TOKENS", "limit": 10**15})):
                resp = client.post(f"/admin/{kind}", json=body)
                assert resp.status_code == 201, resp.text
                refs[kind] = resp.json()["id"]
    yield fuzz_proc
    fuzz_proc.stop()


@pytest.fixture(scope="module")
def http(live: GatewayProcess, refs: dict[str, Any]) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {refs['secret']}"}
    with httpx.Client(base_url=live.base_url, headers=headers, timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
def admin(live: GatewayProcess, refs: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base_url, headers=live.admin_headers(), timeout=15) as client:
        yield client


def post(http: httpx.Client, path: str, content: bytes, content_type: str = "application/json") -> httpx.Response:
    # the header goes as raw bytes: a fuzzed Content-Type may hold non-ASCII
    return http.post(path, content=content, headers={"Content-Type": content_type.encode()})


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


# --- LLM routes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", LLM_ROUTES, ids=lambda r: r.path)
@fuzz_settings(25)
@given(data=st.data())
def test_dialect_shaped_bodies(http: httpx.Client, route: Route, data: st.DataObject) -> None:
    """Bodies shaped like the route's dialect, some fields (or one deep inside) of any type: unary and stream."""
    body = data.draw(st.one_of(route.bodies, fz.one_field_wrong(route.bodies)))
    check(post(http, route.path, encode(body)), route.shape)
    if route.stream_paths:
        for path in route.stream_paths:
            check(post(http, path, encode(body)), route.shape)
    elif isinstance(body, dict):
        check(post(http, route.path, encode({**body, "stream": True})), route.shape)


@pytest.mark.parametrize("route", LLM_ROUTES, ids=lambda r: r.path)
@fuzz_settings(12)
@given(data=st.data())
def test_byte_level_mutations(http: httpx.Client, route: Route, data: st.DataObject) -> None:
    """Bad UTF-8, deep nesting, truncation, flipped bytes, out-of-range numbers, duplicate keys: a 400 at most."""
    raw = data.draw(fz.byte_mutation(route.bodies))
    for path in (route.path, *route.stream_paths):
        check(post(http, path, raw), route.shape)


@fuzz_settings(15)
@given(model=st.one_of(st.just("gemini-test"), fz.TEXT), method=st.text(max_size=24),
       query=st.sampled_from(["", "?alt=sse", "?alt=%ff", "?key=%ff%fe"]))
def test_gemini_paths(http: httpx.Client, model: str, method: str, query: str) -> None:
    """Any model and method in a Gemini path is answered in Gemini's error shape, never a 5xx."""
    path = f"/v1beta/models/{quote(model, safe='')}:{quote(method, safe='')}{query}"
    check(post(http, path, b'{"contents": [{"parts": [{"text": "hi"}]}]}'), gemini_code)


@pytest.mark.parametrize(("path", "model", "file_field"), MULTIPART_ROUTES, ids=lambda v: str(v))
@fuzz_settings(12)
@given(data=st.data())
def test_multipart_uploads(http: httpx.Client, path: str, model: str, file_field: str,
                           data: st.DataObject) -> None:
    """Multipart uploads, whole or broken (bad boundary, truncated, flipped bytes, bad UTF-8): a 400 at most."""
    body, content_type = data.draw(fz.multipart_body(model, file_field))
    check(post(http, path, body, content_type), openai_code)


# --- admin API -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(fz.ADMIN_BODIES))
@fuzz_settings(20)
@given(data=st.data())
def test_admin_bodies(admin: httpx.Client, refs: dict[str, Any], kind: str, data: st.DataObject) -> None:
    """Admin create and update bodies with wrong-typed fields, and broken at the byte level: JSON errors, no 5xx."""
    bodies = fz.ADMIN_BODIES[kind]
    body = data.draw(st.one_of(bodies, fz.one_field_wrong(bodies)))
    raw = data.draw(fz.byte_mutation(bodies))
    # an update names no organisation: without it, more updates get past the unknown-field check
    changes = {k: v for k, v in body.items() if k != "organisation"} if isinstance(body, dict) else body
    check(post(admin, f"/admin/{kind}", encode(body)), admin_code)
    check(admin.patch(f"/admin/{kind}/{refs[kind]}", content=encode(changes)), admin_code)
    check(post(admin, f"/admin/{kind}", raw), admin_code)
    check(admin.patch(f"/admin/{kind}/{refs[kind]}", content=raw), admin_code)
    if kind == "keys":
        ref = refs["keys"]
        for sub, extra in (("rotate", fz.obj({}, {"expires_at": fz.DATE})),
                           ("grants", fz.obj({"model": st.sampled_from(["zeta-model", "nope"])}))):
            check(post(admin, f"/admin/keys/{ref}/{sub}", encode(data.draw(extra))), admin_code)
            check(post(admin, f"/admin/keys/{ref}/{sub}", data.draw(fz.byte_mutation(extra))), admin_code)


# --- afterwards ------------------------------------------------------------------------------------------------


def test_gateway_survived(live: GatewayProcess, http: httpx.Client) -> None:
    """After the fuzzing the process is alive, answers /v1/health, and logged no traceback (no hidden bug)."""
    assert live.proc is not None and live.proc.poll() is None
    assert http.get("/v1/health").status_code == 200
    assert http.post("/v1/chat/completions", json={"model": "gpt-test", "messages": [
        {"role": "user", "content": "still there?"}]}).status_code == 200
    log = Path(live.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-6000:]
