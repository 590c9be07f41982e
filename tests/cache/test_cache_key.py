"""The cache key: every request field of every dialect's schema changes it (the official SDKs' request types are
the schemas), except the short explicit list of fields that never change an answer; and every part of the
call's identity (route dialect, provider, slug, model, organisation, key scope, namespace) changes it too."""

from __future__ import annotations

import re
from typing import Any

from anthropic.types.message_create_params import MessageCreateParamsBase
from google.genai import types as gemini_types
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from openai.types.responses.response_create_params import ResponseCreateParamsBase

from odock.cache.key import IGNORED_FIELDS, cache_key


def _camel(name: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)


# route -> the top-level fields of its request body (Gemini: its generation config sits under generationConfig,
# so its fields are tried there as well)
SCHEMAS: dict[str, list[str]] = {
    "openai.chat": sorted(CompletionCreateParamsBase.__annotations__),
    "openai.responses": sorted(ResponseCreateParamsBase.__annotations__),
    "anthropic.messages": sorted(MessageCreateParamsBase.__annotations__),
    "gemini.generate": [
        "contents",
        "tools",
        "toolConfig",
        "safetySettings",
        "systemInstruction",
        "cachedContent",
    ],
}
GEMINI_CONFIG = sorted(_camel(name) for name in gemini_types.GenerateContentConfig.model_fields)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
IDENTITY = {
    "dialect": "openai.chat",
    "provider": "prov-1",
    "slug": "gpt-4o-mini",
    "model": "gpt-test",
    "organisation": "org-1",
    "key": None,
    "namespace": "default",
}
BASE: dict[str, Any] = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def key_of(body: dict[str, Any], **identity: Any) -> str:
    return cache_key(body=body, **{**IDENTITY, **identity})


def field_paths() -> list[tuple[str, tuple[str, ...]]]:
    paths = [(route, (field,)) for route, fields in SCHEMAS.items() for field in fields]
    return paths + [("gemini.generate", ("generationConfig", field)) for field in GEMINI_CONFIG]


def with_value(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(BASE)
    if len(path) == 1:
        body[path[0]] = value
    else:
        body[path[0]] = {path[1]: value}
    return body


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(field_paths()), json_values, json_values)
def test_every_schema_field_changes_the_key(where: tuple[str, tuple[str, ...]], one: Any, two: Any) -> None:
    """Two values of one field give the same key only when they are the same JSON value; a field the key
    ignores never changes it."""
    route, path = where
    a, b = key_of(with_value(path, one), dialect=route), key_of(with_value(path, two), dialect=route)
    if path[0] in IGNORED_FIELDS:
        assert a == b
    else:
        assert (a == b) == (_canonical(one) == _canonical(two))


def _canonical(value: Any) -> Any:
    import msgspec

    return msgspec.json.Encoder(order="sorted").encode(value)


def test_schema_fields_the_key_ignores_are_the_short_list() -> None:
    """Of all the schemas' fields only delivery and bookkeeping fields are left out of the key."""
    ignored = {field for fields in SCHEMAS.values() for field in fields} & IGNORED_FIELDS
    assert ignored == {"stream_options", "user", "metadata", "safety_identifier"}  # stream: in the subclasses


@given(json_values)
def test_a_new_field_is_in_the_key(value: Any) -> None:
    """A field no schema knows yet still changes the key (the key is the body minus a list, not a selection)."""
    assert key_of({**BASE, "brand_new_option": value}) != key_of(BASE)


def test_every_part_of_the_identity_changes_the_key() -> None:
    base = key_of(BASE)
    for part, other in {
        "dialect": "anthropic.messages",
        "provider": "prov-2",
        "slug": "gpt-4o",
        "model": "gpt-other",
        "organisation": "org-2",
        "key": "key-1",
        "namespace": "faq",
    }.items():
        assert key_of(BASE, **{part: other}) != base, part


def test_key_order_and_ignored_fields_do_not_matter() -> None:
    reordered = {"messages": BASE["messages"], "model": "gpt-test"}
    noisy = {
        **BASE,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u",
        "metadata": {"a": 1},
    }
    assert key_of(reordered) == key_of(BASE) == key_of(noisy)
