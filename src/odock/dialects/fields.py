"""Field checks and JSON helpers shared by the dialect modules (one wording for every 400 they raise)."""

from __future__ import annotations

from typing import Any

import msgspec

from odock.errors import BadRequest

# compact JSON without ASCII escaping, as the providers write it (msgspec: several times json.dumps' speed)
dumps = msgspec.json.encode
# raises msgspec.DecodeError, a ValueError
loads = msgspec.json.decode


def bad(field: str, expected: str) -> BadRequest:
    """A 400 naming the field and what it should have been."""
    return BadRequest(f"{field}: expected {expected}", "invalid_request")


def unsupported(field: str, provider: str) -> BadRequest:
    """A 400 for a field the target provider cannot express (refused, never silently dropped)."""
    return BadRequest(f"{field} is not supported by {provider}", "invalid_request")


def expect_dict(v: Any, field: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise bad(field, "an object")
    return v


def expect_list(v: Any, field: str) -> list[Any]:
    if not isinstance(v, list):
        raise bad(field, "an array")
    return v


def expect_str(v: Any, field: str) -> str:
    if not isinstance(v, str):
        raise bad(field, "a string")
    return v


def count(v: Any) -> int:
    """A token count from a provider's usage object; anything but an int counts as 0."""
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
