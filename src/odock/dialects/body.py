"""A JSON request body as text: parsed once, and every way its text can be wrong is a 400, never a 500."""

from __future__ import annotations

from typing import Any

import msgspec

from odock.errors import BadRequest

MAX_JSON_DEPTH = 128


def decode_json(body: bytes) -> Any:
    """Parse a JSON request body; every way its text can be wrong (malformed, not UTF-8, nested too deep) is
    400 invalid_request_body, never a 500."""
    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", "invalid_request_body") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request body is not valid UTF-8 (byte {exc.start})", "invalid_request_body"
        ) from None
    except RecursionError:
        raise BadRequest(
            f"request body is nested deeper than {MAX_JSON_DEPTH} levels", "invalid_request_body"
        ) from None
    # only a body with that many brackets can nest that deep: the walk is skipped for nearly every request
    if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and _nested_deeper(parsed, MAX_JSON_DEPTH):
        raise BadRequest(
            f"request body is nested deeper than {MAX_JSON_DEPTH} levels", "invalid_request_body"
        )
    return parsed


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels deep (level by level, so it cannot recurse itself)."""
    level: list[Any] = [value] if isinstance(value, (dict, list)) else []
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True
