"""Helpers for the native-route tests (the live gateway fixtures come from tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from odock.mock.testing import MockServer
from tests.harness import wait_usage  # noqa: F401  (re-exported for the tests of this folder)


def last_request(mock: MockServer, path: str) -> dict[str, Any]:
    """The newest journal entry of the mock for one upstream path."""
    entries = [r for r in mock.requests if r["path"] == path]
    assert entries, f"the mock saw no request on {path}"
    return entries[-1]


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """What the in-process mock received on its multipart routes: per request, the `x-mock-files` summary
    (`name=size:sha256[:12]` of every file part) and the form fields, as the mock echoes in its response header."""
    from odock.mock import multipart, server
    from odock.mock.wire import Call, MockRequest, Reply

    seen: list[dict[str, str]] = []
    for route, (provider, handler) in list(server.ROUTES.items()):
        if route[1] not in (
            "/v1/images/edits",
            "/v1/images/variations",
            "/v1/audio/transcriptions",
            "/v1/audio/translations",
        ):
            continue

        def spy(req: MockRequest, handler: Any = handler) -> Call | Reply:
            parts = multipart.parse(req.headers.get("content-type", ""), req.body)
            seen.append({"path": req.path, "files": multipart.describe(parts), **multipart.fields(parts)})
            return handler(req)  # type: ignore[no-any-return]

        monkeypatch.setitem(server.ROUTES, route, (provider, spy))
    return seen
