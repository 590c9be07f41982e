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


def refuse_openai_only_hints(req: Any, provider: str) -> None:
    """Refuse the OpenAI hints that Anthropic and Gemini cannot carry: a participant `name` on a message and a
    non-default image `detail` (refused by name rather than dropped, like every untranslatable field)."""
    for i, m in enumerate(req.messages):
        if m.name and m.role != "tool":
            raise unsupported(f"messages[{i}].name", provider)
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.type == "image" and part.detail not in (None, "auto"):
                    raise unsupported(f"messages[{i}].content[{j}].image_url.detail", provider)


# no call uses a trillion tokens: a larger count is garbage, and billed it would overflow the ledger's cost column
MAX_TOKEN_COUNT = 2**40


def count(v: Any) -> int:
    """A token count from a provider's usage object: an int (or a float holding one); anything else counts as 0.
    Impossible values (negative, absurd) are left for the pipeline's usage check to clamp and flag."""
    kind = type(v)  # exact types: JSON decodes to these, and a bool is not a count
    if kind is int:
        return v  # type: ignore[no-any-return]
    return int(v) if kind is float and v.is_integer() else 0
