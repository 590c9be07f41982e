"""What the fuzz tests share: bounded hypothesis settings, the error shape each SDK reads, the routes, and the
checks made on every answer."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from tests.fuzz import strategies as fz
from tests.harness import GatewayProcess, wait_usage

SCALE = float(os.environ.get("ODOCK_FUZZ_SCALE", "1"))
# the only 5xx a client may see here: the upstream refused a fuzzed body (the documented 503s mean a dependency is
# down, and the store is up: a 503 here would be a bad input mistaken for an outage)
DOCUMENTED_5XX = {502: {"upstream_error"}}


def fuzz_settings(examples: int) -> settings:
    # no shrinking: over HTTP it takes minutes, and the failure message already names the route, the request and
    # the answer (derandomized, the same example comes back on every run)
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


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
    details = err.get("details") or [{"reason": err["status"]}]  # a provider's own error may carry no details
    return str(details[0]["reason"])


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
        if (
            status != 204
            and "json" in resp.headers.get("content-type", "")
            and not resp.request.url.path.endswith(":streamGenerateContent")
        ):
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
    Route(
        "/v1/llm/chat",
        openai_code,
        fz.chat_body(["gpt-test", "claude-test", "gemini-test", "vllm-test"], unified=True),
    ),
    Route("/v1/chat/completions", openai_code, fz.chat_body(["gpt-test"])),
    Route("/v1/responses", openai_code, fz.responses_body("gpt-test")),
    Route("/v1/embeddings", openai_code, fz.embeddings_body("embed-test")),
    Route("/v1/images/generations", openai_code, fz.IMAGES_BODY),
    Route("/v1/messages", anthropic_code, fz.ANTHROPIC_BODY),
    Route(
        f"{GEMINI}:generateContent",
        gemini_code,
        fz.GEMINI_BODY,
        (f"{GEMINI}:streamGenerateContent?alt=sse", f"{GEMINI}:streamGenerateContent"),
    ),
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


def post(
    http: httpx.Client, path: str, content: bytes, content_type: str = "application/json"
) -> httpx.Response:
    # the header goes as raw bytes: a fuzzed Content-Type may hold non-ASCII
    return http.post(path, content=content, headers={"Content-Type": content_type.encode()})


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def fuzz_route(http: httpx.Client, route: Route, body: Any) -> None:
    """Send a body unary and streamed (`"stream": true`, or the route's stream paths) and check each answer."""
    check(post(http, route.path, encode(body)), route.shape)
    if route.stream_paths:
        for path in route.stream_paths:
            check(post(http, path, encode(body)), route.shape)
    elif isinstance(body, dict):
        check(post(http, route.path, encode({**body, "stream": True})), route.shape)


def fuzz_admin(admin: httpx.Client, refs: dict[str, Any], kind: str, data: st.DataObject) -> None:
    """Create and update one kind of admin object with a drawn body, whole and broken at the byte level."""
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
        for sub, extra in (
            ("rotate", fz.obj({}, {"expires_at": fz.DATE})),
            ("grants", fz.obj({"model": st.sampled_from(["zeta-model", "nope"])})),
        ):
            check(post(admin, f"/admin/keys/{ref}/{sub}", encode(data.draw(extra))), admin_code)
            check(post(admin, f"/admin/keys/{ref}/{sub}", data.draw(fz.byte_mutation(extra))), admin_code)


async def assert_survived(live: GatewayProcess, http: httpx.Client) -> None:
    """The process is alive and answers /v1/health and a call; the usage writer still writes (a record the store
    cannot hold would stop it for good); no traceback was logged (a bug the answers did not show)."""
    assert live.proc is not None and live.proc.poll() is None
    assert http.get("/v1/health").status_code == 200
    resp = http.post(
        "/v1/chat/completions",
        json={
            "model": "gpt-test",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "still there?"}],
        },
    )
    assert resp.status_code == 200, resp.text
    service = await live.open_service()
    try:
        await wait_usage(service, resp.headers["x-request-id"])
    finally:
        await service.store.close()
    log = Path(live.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-6000:]
