"""Metric labels are bounded: 10,000 requests naming random models, keys, paths and request ids leave the number
of series flat (peer lesson: label cardinality explodes per key or per raw requested model)."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

from odock import metrics
from odock.edge.app import Edge
from tests.inprocess import in_process_gateway


def series() -> int:
    """The number of time series the gateway exposes."""
    return sum(len(family.samples) for family in metrics.REGISTRY.collect())


def word(rng: random.Random, size: int = 12) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "-._/:", k=size))


async def call(app: Edge, path: str, headers: dict[str, str], body: bytes) -> int:
    """One request straight into the ASGI app (cheaper than an HTTP client: 10,000 of them run in seconds)."""
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def random_request(rng: random.Random, secret: str) -> tuple[str, dict[str, str], bytes]:
    """A request naming a random model, key, path or request id."""
    model = word(rng, rng.randint(1, 60))
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"authorization": f"Bearer {secret}", "x-request-id": word(rng, 20)}
    kind = rng.randrange(4)
    if kind == 1:
        headers["authorization"] = f"Bearer sk-{word(rng, 32)}"
    elif kind == 2:
        return f"/v1beta/models/{model}:generateContent", {"x-goog-api-key": secret}, b'{"contents": []}'
    elif kind == 3:
        return f"/v1/{word(rng, 8)}", headers, body
    return rng.choice(["/v1/chat/completions", "/v1/llm/chat", "/v1/messages"]), headers, body


async def test_random_models_and_keys_leave_the_series_flat(tmp_path: Path) -> None:
    """After a warm-up covering each kind of request, 10,000 more with random names add no series."""
    rng = random.Random(15)
    async with in_process_gateway(tmp_path, request_log="off") as gw:
        secret = gw.seeded["secret"]
        statuses: set[int] = set()
        for _ in range(200):
            statuses.add(await call(gw.app, *random_request(rng, secret)))
        before = series()
        # one at a time (concurrent calls only queue on the SQLite pool); each random name is a catalogue miss,
        # so this is the slowest test here (~1 ms a request)
        for _ in range(10_000):
            statuses.add(await call(gw.app, *random_request(rng, secret)))
        after = series()
    assert {400, 401, 404} <= statuses
    assert after == before
