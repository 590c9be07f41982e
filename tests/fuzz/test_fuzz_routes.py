"""Fuzz every route of a live embedded gateway (backed by the mock provider) over real HTTP: bodies shaped like each
dialect's request, with one value of any type, broken at the byte level (bad UTF-8, deep nesting, truncation, …),
unary and streamed, and the admin API. No answer may be a 5xx but the upstream's refusal of a fuzzed body (502),
every error is shaped for the route's SDK, and afterwards the process answers, still records usage and has logged
no traceback.

Bounded and reproducible: derandomized, a fixed number of examples per route (the whole file runs in well under
30 s). `ODOCK_FUZZ_SCALE=20` multiplies the examples for a longer local run.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import strategies as fz
from tests.fuzz.helpers import (
    LLM_ROUTES,
    MULTIPART_ROUTES,
    Route,
    assert_survived,
    check,
    fuzz_admin,
    fuzz_route,
    fuzz_settings,
    gemini_code,
    openai_code,
    post,
)
from tests.harness import GatewayProcess

# --- LLM routes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", LLM_ROUTES, ids=lambda r: r.path)
@fuzz_settings(25)
@given(data=st.data())
def test_dialect_shaped_bodies(http: httpx.Client, route: Route, data: st.DataObject) -> None:
    """Bodies shaped like the route's dialect, or with one value deep inside of any type: unary and stream."""
    fuzz_route(http, route, data.draw(st.one_of(route.bodies, fz.one_field_wrong(route.bodies))))


@pytest.mark.parametrize("route", LLM_ROUTES, ids=lambda r: r.path)
@fuzz_settings(12)
@given(data=st.data())
def test_byte_level_mutations(http: httpx.Client, route: Route, data: st.DataObject) -> None:
    """Bad UTF-8, deep nesting, truncation, flipped bytes, out-of-range numbers, duplicate keys: a 400 at most."""
    raw = data.draw(fz.byte_mutation(route.bodies))
    for path in (route.path, *route.stream_paths):
        check(post(http, path, raw), route.shape)


@fuzz_settings(15)
@given(
    model=st.one_of(st.just("gemini-test"), fz.TEXT),
    method=st.text(max_size=24),
    query=st.sampled_from(["", "?alt=sse", "?alt=%ff", "?key=%ff%fe"]),
)
def test_gemini_paths(http: httpx.Client, model: str, method: str, query: str) -> None:
    """Any model and method in a Gemini path is answered in Gemini's error shape, never a 5xx."""
    path = f"/v1beta/models/{quote(model, safe='')}:{quote(method, safe='')}{query}"
    check(post(http, path, b'{"contents": [{"parts": [{"text": "hi"}]}]}'), gemini_code)


@pytest.mark.parametrize(("path", "model", "file_field"), MULTIPART_ROUTES, ids=lambda v: str(v))
@fuzz_settings(12)
@given(data=st.data())
def test_multipart_uploads(
    http: httpx.Client, path: str, model: str, file_field: str, data: st.DataObject
) -> None:
    """Multipart uploads, whole or broken (bad boundary, truncated, flipped bytes, bad UTF-8): a 400 at most."""
    body, content_type = data.draw(fz.multipart_body(model, file_field))
    check(post(http, path, body, content_type), openai_code)


# --- admin API -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(fz.ADMIN_BODIES))
@fuzz_settings(20)
@given(data=st.data())
def test_admin_bodies(admin: httpx.Client, refs: dict[str, Any], kind: str, data: st.DataObject) -> None:
    """Admin create and update bodies with wrong-typed fields, and broken at the byte level: JSON errors, no 5xx."""
    fuzz_admin(admin, refs, kind, data)


# --- afterwards ------------------------------------------------------------------------------------------------


async def test_gateway_survived(live: GatewayProcess, http: httpx.Client) -> None:
    """After the fuzzing the process is alive, answers, still records usage, and logged no traceback."""
    await assert_survived(live, http)
