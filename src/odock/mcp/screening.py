"""The texts SafetySec and plugins see on an MCP call, and where they go back (pure, no I/O).

A request's texts are its `tools/call` and `prompts/get` arguments (every string inside, whatever the keys); an
answer's are the results of `tools/call` (text content, embedded resources' text, every string of
`structuredContent`), `prompts/get` (its messages' text) and `resources/read` (its contents' text). Images, audio,
blobs, URIs and names are never screened. Both walks go in a fixed order, so texts collected by one pass can be
written back by a second (the plugins' normalized view: `odock.pipeline.stages.mcp_screen`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from odock.mcp.protocol import Message
from odock.safety.engine import walk_json

__all__ = ["ARGUMENT_METHODS", "SCREENED_METHODS", "answered_results", "walk_arguments", "walk_result"]

Visit = Callable[[str], str]

# methods whose params carry free-form arguments
ARGUMENT_METHODS = frozenset({"tools/call", "prompts/get"})
# methods whose results carry text a client reads
SCREENED_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})


def walk_arguments(message: Message, visit: Visit) -> None:
    """Screen, in place, every string of the message's `params.arguments`."""
    arguments = message.params.get("arguments")
    if isinstance(arguments, dict):
        walk_json(arguments, visit, free=True)


def _walk_block(block: Any, visit: Visit) -> None:
    """A content block: its text, or an embedded resource's text."""
    if not isinstance(block, dict):
        return
    text = block.get("text")
    if isinstance(text, str):
        block["text"] = visit(text)
    resource = block.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("text"), str):
        resource["text"] = visit(resource["text"])


def walk_result(result: dict[str, Any], visit: Visit) -> None:
    """Screen, in place, the text surfaces of one result (tools/call, prompts/get, resources/read)."""
    for key in ("content", "contents"):
        blocks = result.get(key)
        if isinstance(blocks, list):
            for block in blocks:
                _walk_block(block, visit)
    messages = result.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            for block in content if isinstance(content, list) else [content]:
                _walk_block(block, visit)
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        walk_json(structured, visit, free=True)


def answered_results(payload: Any, ids: frozenset[Any] | None) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(id, result) of each JSON-RPC answer in `payload` (a message or a batch) to one of `ids` (None: any)."""
    for item in payload if isinstance(payload, list) else [payload]:
        if isinstance(item, dict) and (ids is None or item.get("id") in ids):
            result = item.get("result")
            if isinstance(result, dict):
                yield item.get("id"), result
