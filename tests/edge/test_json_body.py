"""The one request-body decoder: every way a body can be wrong is 400 invalid_request_body, never a 500."""

from __future__ import annotations

import pytest

from odock.dialects.body import MAX_JSON_DEPTH, decode_json
from odock.errors import BadRequest


def nested_lists(depth: int) -> bytes:
    """A JSON object (level 1) whose field `a` nests `depth - 1` arrays."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def nested_objects(depth: int) -> bytes:
    """`depth` JSON objects, each the field `a` of the one around it."""
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"model": "\xff"}', "not valid UTF-8"),
        (b'{"\xc3\x28": 1}', "not valid UTF-8"),  # in a key
        (b'{"a": "\xed\xa0\x80"}', "not valid UTF-8"),  # an encoded surrogate
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper"),
        (nested_lists(MAX_JSON_DEPTH + 1), "nested deeper"),
        (nested_objects(MAX_JSON_DEPTH + 1), "nested deeper"),
        (b"{not json", "not valid JSON"),
        (b'{"max_tokens": 1e400}', "not valid JSON"),
    ],
)
def test_bad_bodies_are_400_invalid_request_body(body: bytes, needle: str) -> None:
    """Bad UTF-8 and nesting past the limit (also far past the interpreter's recursion limit) are 400s."""
    with pytest.raises(BadRequest) as info:
        decode_json(body)
    assert info.value.code == "invalid_request_body" and needle in info.value.message


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """A body exactly at the depth limit decodes, whichever containers it nests."""
    assert "a" in decode_json(nested_lists(MAX_JSON_DEPTH))
    assert "a" in decode_json(nested_objects(MAX_JSON_DEPTH))
    wide = b'{"a": [' + b",".join([b"[[1]]"] * 500) + b"]}"  # many brackets, shallow: still accepted
    assert len(decode_json(wide)["a"]) == 500


def test_brackets_inside_strings_do_not_count() -> None:
    """Brackets in string values are not nesting."""
    body = b'{"content": "' + b"[{" * 1000 + b'"}'
    assert decode_json(body)["content"].startswith("[{")
