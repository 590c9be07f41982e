"""Hypothesis strategies for the fuzz tests: request bodies shaped like each dialect's request, the same with one
value anywhere inside replaced by any JSON value (often of the wrong type), and byte-level mutations of their
encoding."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import strategies as st

TEXT = st.text(max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), TEXT
)
# any JSON value: the "wrong type" a fuzzed field gets
JUNK: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)
SCHEMA = st.just({"type": "object", "properties": {"a": {"type": "string"}}})


def obj(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with its required fields and any of its optional ones (valid values: `one_field_wrong`
    breaks them)."""
    return st.fixed_dictionaries(required, optional=optional or {})


def some(item: st.SearchStrategy[Any], min_size: int = 0, max_size: int = 3) -> st.SearchStrategy[list[Any]]:
    return st.lists(item, min_size=min_size, max_size=max_size)


SMALL_INT = st.integers(1, 32)
UNIT = st.floats(0, 1)
IMAGE_URL = st.sampled_from(
    ["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo=", "data:,x", ""]
)
ARGUMENTS = st.sampled_from(["{}", '{"a": 1}', "[1]", "not json", ""])

# --- OpenAI chat (also /v1/llm/chat and /v1/vllm/chat/completions) ------------------------------------------

_chat_part = st.one_of(
    obj({"type": st.just("text"), "text": TEXT}),
    obj(
        {
            "type": st.just("image_url"),
            "image_url": st.one_of(
                IMAGE_URL, obj({"url": IMAGE_URL}, {"detail": st.sampled_from(["auto", "low"])})
            ),
        }
    ),
    obj({"type": st.just("refusal"), "refusal": TEXT}),
    obj({"type": st.sampled_from(["input_audio", "file", "thinking"])}),
)
_tool_call = obj(
    {"id": TEXT, "type": st.just("function"), "function": obj({"name": TEXT}, {"arguments": ARGUMENTS})}
)
_chat_message = obj(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])},
    {
        "content": st.one_of(TEXT, some(_chat_part), st.none()),
        "name": TEXT,
        "tool_calls": some(_tool_call),
        "tool_call_id": TEXT,
    },
)
_chat_tool = obj(
    {
        "type": st.just("function"),
        "function": obj({"name": TEXT}, {"description": TEXT, "parameters": SCHEMA, "strict": st.booleans()}),
    }
)
_response_format = st.one_of(
    st.just({"type": "text"}),
    st.just({"type": "json_object"}),
    obj({"type": st.just("json_schema"), "json_schema": obj({"name": TEXT}, {"schema": SCHEMA})}),
)


def chat_body(models: list[str], *, unified: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """An OpenAI chat completions request."""
    optional: dict[str, st.SearchStrategy[Any]] = {
        "temperature": UNIT,
        "top_p": UNIT,
        "max_tokens": SMALL_INT,
        "max_completion_tokens": SMALL_INT,
        "stop": st.one_of(TEXT, st.lists(TEXT, max_size=2)),
        "seed": st.integers(),
        "top_k": SMALL_INT,
        "presence_penalty": UNIT,
        "frequency_penalty": UNIT,
        "metadata": st.dictionaries(st.sampled_from(["user_id", "k"]), TEXT, max_size=2),
        "response_format": _response_format,
        "tools": some(_chat_tool),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required"]),
            obj({"type": st.just("function"), "function": obj({"name": TEXT})}),
        ),
        "stream": st.booleans(),
        "stream_options": obj({"include_usage": st.booleans()}),
        "include_usage": st.booleans(),
        "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high"]),
        "provider": st.sampled_from(["openai", "anthropic", "gemini", "vllm"]),
    }
    if not unified:
        optional.update(
            {
                "n": st.integers(1, 2),
                "logprobs": st.booleans(),
                "user": TEXT,
                "logit_bias": st.dictionaries(st.just("1"), st.integers(-5, 5), max_size=1),
            }
        )
    return obj({"model": st.sampled_from(models), "messages": some(_chat_message, min_size=1)}, optional)


# --- Anthropic Messages ----------------------------------------------------------------------------------------

_text_block = obj({"type": st.just("text"), "text": TEXT})
_anthropic_block = st.one_of(
    _text_block,
    obj(
        {
            "type": st.just("image"),
            "source": obj(
                {"type": st.sampled_from(["base64", "url"])},
                {"media_type": st.just("image/png"), "data": st.just("iVBORw0KGgo="), "url": IMAGE_URL},
            ),
        }
    ),
    obj(
        {
            "type": st.just("tool_use"),
            "id": TEXT,
            "name": TEXT,
            "input": st.dictionaries(TEXT, TEXT, max_size=2),
        }
    ),
    obj(
        {"type": st.just("tool_result"), "tool_use_id": TEXT},
        {"content": st.one_of(TEXT, some(_text_block)), "is_error": st.booleans()},
    ),
    obj({"type": st.just("thinking"), "thinking": TEXT, "signature": TEXT}),
)
_anthropic_message = obj(
    {
        "role": st.sampled_from(["user", "assistant"]),
        "content": st.one_of(TEXT, some(_anthropic_block, min_size=1)),
    }
)
ANTHROPIC_BODY = obj(
    {
        "model": st.just("claude-test"),
        "max_tokens": SMALL_INT,
        "messages": some(_anthropic_message, min_size=1),
    },
    {
        "system": st.one_of(TEXT, some(_text_block)),
        "temperature": UNIT,
        "top_p": UNIT,
        "top_k": SMALL_INT,
        "stop_sequences": st.lists(TEXT, max_size=2),
        "stream": st.booleans(),
        "tools": some(obj({"name": TEXT}, {"description": TEXT, "input_schema": SCHEMA})),
        "tool_choice": st.one_of(
            obj({"type": st.sampled_from(["auto", "any", "none"])}),
            obj({"type": st.just("tool"), "name": TEXT}),
        ),
        "metadata": obj({}, {"user_id": TEXT}),
        "thinking": obj(
            {"type": st.sampled_from(["enabled", "disabled"])}, {"budget_tokens": st.integers(0, 2048)}
        ),
        "provider": st.sampled_from(["anthropic", "openai"]),
    },
)

# --- Gemini generateContent ------------------------------------------------------------------------------------

_gemini_part = st.one_of(
    obj({"text": TEXT}, {"thought": st.booleans()}),
    obj({"inlineData": obj({"mimeType": st.just("image/png"), "data": st.just("iVBORw0KGgo=")})}),
    obj({"fileData": obj({"fileUri": IMAGE_URL}, {"mimeType": st.just("image/png")})}),
    obj({"functionCall": obj({"name": TEXT}, {"args": st.dictionaries(TEXT, TEXT, max_size=2)})}),
    obj({"functionResponse": obj({"name": TEXT, "response": st.dictionaries(TEXT, TEXT, max_size=2)})}),
)
_gemini_content = obj({"parts": some(_gemini_part, min_size=1)}, {"role": st.sampled_from(["user", "model"])})
GEMINI_BODY = obj(
    {"contents": some(_gemini_content, min_size=1)},
    {
        "systemInstruction": obj({"parts": some(obj({"text": TEXT}))}),
        "generationConfig": obj(
            {},
            {
                "maxOutputTokens": SMALL_INT,
                "temperature": UNIT,
                "topP": UNIT,
                "topK": SMALL_INT,
                "candidateCount": st.integers(1, 2),
                "stopSequences": st.lists(TEXT, max_size=2),
                "responseMimeType": st.sampled_from(["application/json", "text/plain"]),
                "thinkingConfig": obj(
                    {}, {"thinkingBudget": st.integers(-1, 1024), "includeThoughts": st.booleans()}
                ),
            },
        ),
        "tools": some(
            obj(
                {
                    "functionDeclarations": some(
                        obj({"name": TEXT}, {"description": TEXT, "parameters": SCHEMA})
                    )
                }
            )
        ),
        "toolConfig": obj({"functionCallingConfig": obj({"mode": st.sampled_from(["AUTO", "ANY", "NONE"])})}),
        "safetySettings": st.lists(st.dictionaries(TEXT, TEXT, max_size=2), max_size=2),
        "provider": st.sampled_from(["gemini", "openai"]),
    },
)

# --- OpenAI Responses ------------------------------------------------------------------------------------------

_input_part = st.one_of(
    obj({"type": st.sampled_from(["input_text", "output_text"]), "text": TEXT}),
    obj({"type": st.just("input_image"), "image_url": IMAGE_URL}, {"detail": st.just("auto")}),
)
_input_item = st.one_of(
    obj(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer"]),
            "content": st.one_of(TEXT, some(_input_part)),
        },
        {"type": st.just("message")},
    ),
    obj({"type": st.just("function_call"), "call_id": TEXT, "name": TEXT, "arguments": ARGUMENTS}),
    obj({"type": st.just("function_call_output"), "call_id": TEXT, "output": TEXT}),
    obj(
        {"type": st.just("reasoning"), "summary": some(obj({"type": st.just("summary_text"), "text": TEXT}))}
    ),
)


def responses_body(model: str) -> st.SearchStrategy[dict[str, Any]]:
    """An OpenAI Responses request."""
    return obj(
        {"model": st.just(model), "input": st.one_of(TEXT, some(_input_item, min_size=1))},
        {
            "instructions": TEXT,
            "max_output_tokens": SMALL_INT,
            "temperature": UNIT,
            "top_p": UNIT,
            "tools": some(obj({"type": st.just("function"), "name": TEXT}, {"parameters": SCHEMA})),
            "tool_choice": st.one_of(
                st.sampled_from(["auto", "none", "required"]),
                obj({"type": st.just("function"), "name": TEXT}),
            ),
            "text": obj({"format": obj({"type": st.sampled_from(["text", "json_object", "json_schema"])})}),
            "reasoning": obj({"effort": st.sampled_from(["low", "high"])}),
            "stream": st.booleans(),
            "store": st.booleans(),
            "previous_response_id": TEXT,
            "provider": st.sampled_from(["openai", "vllm"]),
        },
    )


# --- OpenAI media and vLLM JSON routes -------------------------------------------------------------------------


def embeddings_body(model: str) -> st.SearchStrategy[dict[str, Any]]:
    return obj(
        {
            "model": st.just(model),
            "input": st.one_of(TEXT, st.lists(TEXT, max_size=3), st.lists(st.integers(0, 100), max_size=3)),
        },
        {
            "dimensions": SMALL_INT,
            "encoding_format": st.sampled_from(["float", "base64"]),
            "user": TEXT,
            "stream": st.booleans(),
        },
    )


IMAGES_BODY = obj(
    {"model": st.just("image-test"), "prompt": TEXT},
    {
        "n": st.integers(1, 2),
        "size": st.sampled_from(["256x256", "1024x1024"]),
        "response_format": st.sampled_from(["url", "b64_json"]),
        "stream": st.booleans(),
    },
)
COMPLETIONS_BODY = obj(
    {"model": st.just("vllm-test"), "prompt": st.one_of(TEXT, st.lists(TEXT, max_size=2))},
    {
        "max_tokens": SMALL_INT,
        "temperature": UNIT,
        "top_k": SMALL_INT,
        "echo": st.booleans(),
        "stream": st.booleans(),
        "stream_options": obj({"include_usage": st.booleans()}),
        "guided_json": SCHEMA,
    },
)
VLLM_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "tokenize": obj(
        {"model": st.just("vllm-test")},
        {"prompt": TEXT, "messages": some(_chat_message), "add_special_tokens": st.booleans()},
    ),
    "detokenize": obj({"model": st.just("vllm-test"), "tokens": st.lists(st.integers(0, 1000), max_size=4)}),
    "pooling": obj({"model": st.just("vllm-test"), "input": st.one_of(TEXT, st.lists(TEXT, max_size=2))}),
    "classify": obj({"model": st.just("vllm-test"), "input": st.one_of(TEXT, st.lists(TEXT, max_size=2))}),
    "score": obj({"model": st.just("vllm-test"), "text_1": TEXT, "text_2": st.one_of(TEXT, st.lists(TEXT))}),
    "rerank": obj(
        {"model": st.just("vllm-test"), "query": TEXT, "documents": st.lists(TEXT, max_size=3)},
        {"top_n": SMALL_INT},
    ),
}


# --- mutations ---------------------------------------------------------------------------------------------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


@st.composite
def one_field_wrong(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A body with exactly one value somewhere inside replaced by any JSON value (often of the wrong type)."""
    body = copy.deepcopy(draw(bodies))  # `st.just` values are shared between examples: never mutate them
    paths = _paths(body)
    if not paths:
        return body
    path = draw(st.sampled_from(paths))
    node: Any = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = draw(JUNK)
    return body


BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]


def _nest(depth: int, kind: str) -> bytes:
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def byte_mutation(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> bytes:
    """The encoding of a body, broken at the byte level: bad UTF-8, deep nesting, truncation, flipped bytes,
    numbers out of range, duplicate keys, a BOM."""
    body = draw(bodies)
    raw = json.dumps(body).encode()
    kind = draw(
        st.sampled_from(
            [
                "utf8",
                "utf8_in_string",
                "nest_field",
                "nest_root",
                "truncate",
                "flip",
                "number",
                "duplicate",
                "bom",
                "nul",
            ]
        )
    )
    if kind == "utf8":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:]
    if kind == "utf8_in_string":
        quotes = [i for i, b in enumerate(raw) if b == ord('"')] or [0]
        at = draw(st.sampled_from(quotes)) + 1
        return raw[:at] + draw(st.sampled_from(BAD_UTF8)) + raw[at:]
    if kind in ("nest_field", "nest_root"):
        depth = draw(st.sampled_from([100, 127, 128, 129, 500, 1_000, 100_000]))
        nested = _nest(depth, draw(st.sampled_from(["[", "{"])))
        if kind == "nest_root":
            return nested
        key = draw(st.sampled_from([*body, "extra"] if body else ["extra"]))
        return (
            b"{" + json.dumps(key).encode() + b":" + nested + b"," + raw[1:]
            if raw != b"{}"
            else b"{" + json.dumps(key).encode() + b":" + nested + b"}"
        )
    if kind == "truncate":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "flip":
        out = bytearray(raw)
        for _ in range(draw(st.integers(1, 3))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "number":
        number = draw(
            st.sampled_from(
                [
                    b"1e400",
                    b"-1e400",
                    b"1e-400",
                    b"123456789012345678901234567890",
                    b"-0",
                    b"NaN",
                    b"Infinity",
                    b"1.0e+",
                    b"0x10",
                ]
            )
        )
        key = draw(st.sampled_from(["max_tokens", "temperature", "n", "top_k", "model", "stream"]))
        return b"{" + json.dumps(key).encode() + b":" + number + (b"," + raw[1:] if raw != b"{}" else b"}")
    if kind == "duplicate":
        key = draw(st.sampled_from([*body] or ["model"]))
        return (
            b"{"
            + json.dumps(key).encode()
            + b":"
            + json.dumps(draw(JUNK)).encode()
            + (b"," + raw[1:] if raw != b"{}" else b"}")
        )
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw.replace(b'"', b'"\x00', 1)


# --- multipart ---------------------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@st.composite
def multipart_body(draw: st.DrawFn, model: str, file_field: str) -> tuple[bytes, str]:
    """A multipart/form-data upload (body, Content-Type), valid or broken at the byte level."""
    boundary = draw(st.sampled_from(["odockfuzz", "x" * 70, "a b", "\u00e9t\u00e9"]))
    parts: list[tuple[str, str | None, bytes]] = [("model", None, model.encode()), (file_field, "f.png", PNG)]
    extra = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["model", "prompt", "n", "stream", file_field, "x", ""]),
                st.one_of(st.none(), st.just("g.png"), st.just('q"uote')),
                st.binary(max_size=16),
            ),
            max_size=3,
        )
    )
    parts.extend(extra)
    if draw(st.booleans()):
        parts = draw(st.permutations(parts))[: draw(st.integers(0, len(parts)))]
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    kind = draw(st.sampled_from(["as_is", "as_is", "truncate", "flip", "utf8"]))
    if kind == "truncate":
        out = out[: draw(st.integers(0, len(out)))]
    elif kind == "flip":
        buf = bytearray(out)
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        out = bytes(buf)
    elif kind == "utf8":
        at = draw(st.integers(0, len(out)))
        out = out[:at] + draw(st.sampled_from(BAD_UTF8)) + out[at:]
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                f'multipart/form-data; boundary="{boundary}"',
                "multipart/form-data",
                "application/json",
                "multipart/form-data; boundary=" + boundary + "\u00ff",
            ]
        )
    )
    return out, content_type


# --- admin API ---------------------------------------------------------------------------------------------------

POLICIES = st.one_of(
    st.just({}),
    st.just({"ratelimit": {"requests": {"per_minute": 1000}}}),
    st.just({"routing": {"chat": {"strategy": "failover", "candidates": [{"modelName": "zeta-model"}]}}}),
    st.just({"routing": {"chat": {"strategy": 5}}}),
    JUNK,
)
DATE = st.sampled_from(["2031-01-01T00:00:00Z", "2020-01-01", "not a date", "", "2031-13-45"])
ZONE = st.sampled_from(["UTC", "Europe/Paris", "Not/AZone", "", "../etc/passwd"])
ADMIN_BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "organisations": obj({"name": TEXT}, {"timezone": ZONE, "policies": POLICIES}),
    "teams": obj({"organisation": st.just("zeta"), "name": TEXT}, {"policies": POLICIES}),
    "users": obj(
        {"organisation": st.just("zeta"), "email": st.sampled_from(["a@b.c", "nope", ""])}, {"name": TEXT}
    ),
    "providers": obj(
        {
            "organisation": st.just("zeta"),
            "name": TEXT,
            "type": st.sampled_from(["openai", "anthropic", "gemini", "vllm", "azure_openai", "nope"]),
            "base_url": st.sampled_from(["http://127.0.0.1:9/v1", "ftp://x", ""]),
        },
        {
            "api_key": TEXT,
            "timeout_ms": st.integers(),
            "enabled": st.booleans(),
            "config": st.dictionaries(TEXT, JUNK, max_size=2),
        },
    ),
    "models": obj(
        {"organisation": st.just("zeta"), "name": TEXT, "provider": st.just("zeta-provider"), "slug": TEXT},
        {
            "type": st.sampled_from(["chat", "embeddings", "image", "nope"]),
            "capabilities": st.lists(TEXT, max_size=2),
            "pricing": st.one_of(
                st.just({"input": 1.0, "output": 2.0}), st.dictionaries(TEXT, JUNK, max_size=2)
            ),
            "policies": POLICIES,
            "config": st.dictionaries(TEXT, JUNK, max_size=2),
        },
    ),
    "keys": obj(
        {"organisation": st.just("zeta"), "name": TEXT},
        {
            "type": st.sampled_from(["ORGANISATION", "TEAM", "USER", "nope"]),
            "team": TEXT,
            "user": TEXT,
            "expires_at": DATE,
            "timezone": ZONE,
            "policies": POLICIES,
            "secret": st.sampled_from(["sk-odock-fuzz-0123456789abcdef", "short", ""]),
            "models": st.lists(st.sampled_from(["zeta-model", "nope"]), max_size=2),
        },
    ),
    "budgets": obj(
        {"name": TEXT, "period": st.sampled_from(["DAILY", "WEEKLY", "MONTHLY", "QUARTERLY", "YEARLY"])},
        {
            "organisation": st.just("zeta"),
            "amount_usd": st.sampled_from(["25.00", "0.000000001", "-1", "1e400", "1e30", "NaN", "x"]),
            "amount_nanos": st.integers(min_value=0),
            "key": st.just("zeta-key"),
            "owner_type": st.sampled_from(["ORG", "TEAM", "USER", "APIKEY"]),
            "owner_id": TEXT,
            "organisation_id": TEXT,
            "start_at": DATE,
            "end_at": DATE,
            "timezone": ZONE,
            "rollover": st.booleans(),
            "active": st.booleans(),
            "currency": TEXT,
            "thresholds": st.lists(st.integers(), max_size=3),
        },
    ),
    "quotas": obj(
        {
            "name": TEXT,
            "metric": st.sampled_from(["REQUESTS", "TOKENS", "COST", "nope"]),
            "limit": st.integers(),
        },
        {
            "organisation": st.just("zeta"),
            "period": st.sampled_from(["DAILY", "MONTHLY", "nope"]),
            "owner_type": st.sampled_from(["ORG", "APIKEY"]),
            "owner_id": TEXT,
            "organisation_id": TEXT,
            "start_at": DATE,
            "end_at": DATE,
            "timezone": ZONE,
            "active": st.booleans(),
        },
    ),
}


# model names no catalogue can hold: empty, control characters (NUL), wider than the 200-character column
ODD_MODEL_NAMES = st.one_of(
    TEXT,
    st.sampled_from(["", "gpt\x00test", "\x00", "m" * 200, "m" * 201]),
    st.text(min_size=190, max_size=260),
)


@st.composite
def with_model(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A body whose model is an odd name."""
    return {**draw(bodies), "model": draw(ODD_MODEL_NAMES)}
