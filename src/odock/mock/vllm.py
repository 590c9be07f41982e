"""vLLM's extra endpoints: tokenize/detokenize, pooling, classify, score, rerank, audio transcription."""

from __future__ import annotations

import math
from typing import Any

from odock.mock import multipart
from odock.mock.content import estimate_tokens
from odock.mock.directives import Directives
from odock.mock.openai import _embedding
from odock.mock.wire import (
    BadRequest,
    Call,
    MockRequest,
    Reply,
    bounded_inputs,
    dumps,
    int_or_none,
    new_id,
    now,
    text_of,
)

MAX_MODEL_LEN = 32768
_WIDE = 1 << 32
_TOKEN_END = _WIDE + (1 << 84)  # ids above: no token (four 21-bit characters at most)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) and model else "mock-vllm-model"


def encode(text: str) -> list[int]:
    """Tokenize reversibly: 4 characters per token (so counts match the mock's usage rule)."""
    ids = []
    for i in range(0, len(text), 4):
        piece = text[i : i + 4]
        if all(ord(c) < 256 for c in piece):
            ids.append(sum(ord(c) << (8 * k) for k, c in enumerate(piece)))
        else:
            ids.append(_WIDE + sum(ord(c) << (21 * k) for k, c in enumerate(piece)))
    return ids


def _piece(token: int) -> str:
    bits, value = (21, token - _WIDE) if token >= _WIDE else (8, token)
    mask = (1 << bits) - 1
    chars = []
    while value:
        chars.append(chr(value & mask))
        value >>= bits
    return "".join(chars)


def decode(tokens: list[int]) -> str:
    """Invert `encode`."""
    return "".join(_piece(t) for t in tokens)


def _usage(tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


def _inputs(value: Any, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return bounded_inputs(list(value), field)
    raise BadRequest(f"'{field}' must be a string or an array of strings")


def _similarity(a: str, b: str) -> float:
    """Score two texts in (0, 1) by shared words, deterministically."""
    left, right = set(a.lower().split()), set(b.lower().split())
    return round((len(left & right) + 0.5) / (len(left | right) + 1.0), 6)


def tokenize(req: MockRequest) -> Call:
    """Handle POST /tokenize."""
    body = req.json()
    if isinstance(body.get("messages"), list):
        text = "\n".join(text_of(m.get("content")) for m in body["messages"] if isinstance(m, dict))
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        raise BadRequest("'prompt' or 'messages' is required")
    want_strs = body.get("return_token_strs") is True

    def make(_: Directives, __: str) -> Reply:
        ids = encode(text)
        return Reply(
            200,
            dumps(
                {
                    "count": len(ids),
                    "max_model_len": MAX_MODEL_LEN,
                    "tokens": ids,
                    "token_strs": [_piece(t) for t in ids] if want_strs else None,
                }
            ),
        )

    return Call(_model(body), False, text, make)


def detokenize(req: MockRequest) -> Call:
    """Handle POST /detokenize."""
    body = req.json()
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < _TOKEN_END for t in tokens):
        raise BadRequest(
            "'tokens' must be an array of token ids (non-negative integers the tokenizer produces)"
        )
    try:
        prompt = decode(tokens)
    except ValueError:  # a wide id whose 21-bit pieces are not characters
        raise BadRequest("'tokens' holds an id that is not a token") from None

    def make(_: Directives, __: str) -> Reply:
        return Reply(200, dumps({"prompt": prompt}))

    return Call(_model(body), False, "", make)


def pooling(req: MockRequest) -> Call:
    """Handle POST /pooling."""
    body = req.json()
    inputs = _inputs(body.get("input"), "input")

    def make(_: Directives, name: str) -> Reply:
        data = [{"index": i, "object": "pooling", "data": _embedding(t, 16)} for i, t in enumerate(inputs)]
        tokens = sum(estimate_tokens(len(t)) for t in inputs)
        return Reply(
            200,
            dumps(
                {
                    "id": new_id("pool-"),
                    "object": "list",
                    "created": now(),
                    "model": name,
                    "data": data,
                    "usage": _usage(tokens),
                }
            ),
        )

    return Call(_model(body), False, inputs[-1], make)


def classify(req: MockRequest) -> Call:
    """Handle POST /classify."""
    body = req.json()
    inputs = _inputs(body.get("input"), "input")

    def make(_: Directives, name: str) -> Reply:
        data = []
        for i, text in enumerate(inputs):
            p = round(0.5 + 0.5 * math.tanh((len(text) % 7 - 3) / 3), 6)
            data.append(
                {
                    "index": i,
                    "label": "positive" if p >= 0.5 else "negative",
                    "probs": [round(1 - p, 6), p],
                    "num_classes": 2,
                }
            )
        tokens = sum(estimate_tokens(len(t)) for t in inputs)
        return Reply(
            200,
            dumps(
                {
                    "id": new_id("classify-"),
                    "object": "list",
                    "created": now(),
                    "model": name,
                    "data": data,
                    "usage": _usage(tokens),
                }
            ),
        )

    return Call(_model(body), False, inputs[-1], make)


def score(req: MockRequest) -> Call:
    """Handle POST /score and /v1/score (text_1 against each text_2)."""
    body = req.json()
    left = _inputs(body.get("text_1", body.get("queries")), "text_1")
    right = _inputs(body.get("text_2", body.get("documents", body.get("items"))), "text_2")
    if len(left) not in (1, len(right)):
        raise BadRequest("'text_1' must have one item or as many as 'text_2'")
    pairs = [(left[0] if len(left) == 1 else left[i], r) for i, r in enumerate(right)]

    def make(_: Directives, name: str) -> Reply:
        data = [{"index": i, "object": "score", "score": _similarity(a, b)} for i, (a, b) in enumerate(pairs)]
        tokens = sum(estimate_tokens(len(a) + len(b)) for a, b in pairs)
        return Reply(
            200,
            dumps(
                {
                    "id": new_id("score-"),
                    "object": "list",
                    "created": now(),
                    "model": name,
                    "data": data,
                    "usage": _usage(tokens),
                }
            ),
        )

    return Call(_model(body), False, left[0], make)


def rerank(req: MockRequest) -> Call:
    """Handle POST /rerank and /v1/rerank (Jina/Cohere-compatible shape, as vLLM serves it)."""
    body = req.json()
    query = body.get("query")
    if not isinstance(query, str):
        raise BadRequest("'query' must be a string")
    docs_raw = body.get("documents")
    if not isinstance(docs_raw, list) or not docs_raw:
        raise BadRequest("'documents' must be a non-empty array")
    docs = bounded_inputs([d if isinstance(d, str) else text_of([d]) for d in docs_raw], "documents")
    top_n = int_or_none(body.get("top_n")) or len(docs)

    def make(_: Directives, name: str) -> Reply:
        scored = sorted(((i, _similarity(query, d)) for i, d in enumerate(docs)), key=lambda x: (-x[1], x[0]))
        results = [
            {"index": i, "document": {"text": docs[i]}, "relevance_score": s} for i, s in scored[:top_n]
        ]
        tokens = sum(estimate_tokens(len(query) + len(d)) for d in docs)
        return Reply(
            200,
            dumps(
                {
                    "id": new_id("rerank-"),
                    "model": name,
                    "usage": {"total_tokens": tokens},
                    "results": results,
                }
            ),
        )

    return Call(_model(body), False, query, make)


def audio(req: MockRequest) -> Call:
    """Handle POST /v1/audio/transcriptions and /v1/audio/translations (multipart)."""
    parts = multipart.parse(req.headers.get("content-type", ""), req.body)
    form = multipart.fields(parts)
    uploads = [p for p in multipart.files(parts) if p.name == "file"]
    if not uploads:
        raise BadRequest("'file' is required")
    upload = uploads[0]
    fmt = form.get("response_format", "json")
    task = "translate" if req.path.endswith("translations") else "transcribe"
    text = f"Mock {task} of {len(upload.data)} bytes ({upload.digest})."
    seconds = max(1, len(upload.data) // 32000)
    summary = multipart.describe(parts).encode()

    def make(_: Directives, __: str) -> Reply:
        headers = [(b"x-mock-files", summary)]
        if fmt in ("text", "srt", "vtt"):
            return Reply(200, text.encode(), b"text/plain; charset=utf-8", headers)
        if fmt == "verbose_json":
            payload: dict[str, Any] = {
                "task": task,
                "language": form.get("language", "en"),
                "duration": seconds,
                "text": text,
                "segments": [],
                "words": [],
            }
        else:
            payload = {"text": text, "usage": {"type": "duration", "seconds": seconds}}
        return Reply(200, dumps(payload), headers=headers)

    return Call(
        form.get("model") or "mock-whisper",
        False,
        form.get("prompt", ""),
        make,
        extra={"form_keys": sorted({p.name for p in parts})},
    )
