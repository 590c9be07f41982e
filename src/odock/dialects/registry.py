"""Dialect name → its two sides: the one table of wire formats (uvicorn's `HTTP_PROTOCOLS` habit).

A new wire format is one module building a `ClientSide` and an `UpstreamSide`, plus one line here. Provider types
name their upstream dialect in `providers.registry`; endpoints name their client dialect from this table.
"""

from __future__ import annotations

from odock.dialects import anthropic, gemini, openai_chat, openai_responses
from odock.dialects.contract import Dialect

DIALECTS: dict[str, Dialect] = {
    "openai_chat": Dialect("openai_chat", openai_chat.CLIENT, openai_chat.UPSTREAM),
    "vllm_chat": Dialect("vllm_chat", openai_chat.CLIENT, openai_chat.VLLM_UPSTREAM),
    "openai_responses": Dialect("openai_responses", openai_responses.CLIENT, openai_responses.UPSTREAM),
    "anthropic": Dialect("anthropic", anthropic.CLIENT, anthropic.UPSTREAM),
    "gemini": Dialect("gemini", gemini.CLIENT, gemini.UPSTREAM),
}


def dialect(name: str) -> Dialect:
    """The dialect registered under `name` (a KeyError names a programming error: names come from code)."""
    return DIALECTS[name]
