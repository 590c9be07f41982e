"""What a request body says about the input a provider may bill for it, measured cheaply (no tokenizer).

Budget reservations are an upper bound of an honest provider's bill (see `odock.governance.bounds`): text is
bounded by the body's UTF-8 bytes (every tokenizer's token covers at least one byte), and what bytes do not bound
is counted here: image parts, file/audio/video/document parts, input the provider holds itself (a stored response
or conversation, cached content, hosted retrieval and search tools), tool definitions (providers add a tool-use
system prompt), and the number of choices the output is generated for (`n`, `candidateCount`, `best_of`).

The parts are counted for every dialect at once: a part is recognised by its own shape (OpenAI chat, Responses,
Anthropic, Gemini, vLLM) under the keys that hold a conversation. Only objects and arrays are visited there, never
strings, tool schemas or arrays of numbers (token ids), so a text prompt costs a few dictionary lookups per message
whatever its size (scanning the bytes costs more).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
FILE_TYPES = frozenset(
    {
        "file",
        "input_file",
        "document",
        "input_audio",
        "audio",
        "audio_url",
        "video",
        "video_url",
        "input_video",
    }
)
_GEMINI_DATA = ("inlineData", "inline_data", "fileData", "file_data")
# where each dialect keeps what the model reads: chat messages, Responses input, Gemini contents, system prompts
_CONVERSATION_KEYS = ("messages", "input", "contents", "system", "systemInstruction", "system_instruction")
# input the provider adds from its own storage or tools: bounded only by the model's context window
_HIDDEN_KEYS = ("previous_response_id", "conversation", "cachedContent", "cached_content", "mcp_servers")
_HOSTED_TOOL_TYPES = (
    "web_search",
    "file_search",
    "code_interpreter",
    "code_execution",
    "web_fetch",
    "mcp",
    "image_generation",
    "tool_search",
)
_HOSTED_TOOL_KEYS = frozenset(
    {
        "googleSearch",
        "google_search",
        "googleSearchRetrieval",
        "google_search_retrieval",
        "codeExecution",
        "code_execution",
        "urlContext",
        "url_context",
        "fileSearch",
        "file_search",
        "googleMaps",
        "google_maps",
        "retrieval",
    }
)


@dataclass(slots=True)
class PromptShape:
    """The billable shape of one request: its size and the parts whose cost its size does not bound."""

    size: int = 0  # request body bytes
    images: int = 0
    files: int = 0  # documents, audio, video, file references
    hidden: bool = False  # the provider adds input the gateway cannot see
    tools: bool = False
    choices: int = 1  # completions generated (each billed its own output)


def measure_prompt(body: bytes, parsed: dict[str, Any]) -> PromptShape:
    """Measure a decoded JSON request body."""
    images = files = 0
    for key in _CONVERSATION_KEYS:
        value = parsed.get(key)
        if type(value) is list or type(value) is dict:
            found = count_parts(value)
            images, files = images + found[0], files + found[1]
    tools = parsed.get("tools")
    return PromptShape(
        size=len(body),
        images=images,
        files=files,
        hidden=_hidden(parsed, tools),
        tools=isinstance(tools, list) and bool(tools),
        choices=_choices(parsed),
    )


def _gemini_datum(part: dict[str, Any]) -> bool | None:
    """A Gemini part's inline or file datum: True for an image, False for another file, None for no datum."""
    for key in _GEMINI_DATA:
        data = part.get(key)
        if data is not None:
            if type(data) is not dict:
                return None
            mime = data.get("mimeType", data.get("mime_type"))
            return isinstance(mime, str) and mime.startswith("image/")
    return None


def count_parts(node: Any) -> tuple[int, int]:
    """Count (image parts, file/media parts) anywhere in a decoded body; a counted part is not looked into."""
    images = files = 0
    stack = [node]
    push, pop = stack.append, stack.pop
    while stack:
        item = pop()
        if type(item) is dict:
            kind = item.get("type")
            if kind is not None and type(kind) is str:
                if kind in IMAGE_TYPES:
                    images += 1
                    continue
                if kind in FILE_TYPES:
                    files += 1
                    continue
            gemini = _gemini_datum(item)
            if gemini is not None:  # a Gemini part holds one datum
                if gemini:
                    images += 1
                else:
                    files += 1
                continue
            values: Any = item.values()
        elif item and type(item[0]) in (int, float):
            continue  # token ids or a vector: no part in there
        else:
            values = item
        for value in values:
            kind = type(value)
            if kind is dict or kind is list:
                push(value)
    return images, files


def _hidden(parsed: dict[str, Any], tools: Any) -> bool:
    for key in _HIDDEN_KEYS:
        if parsed.get(key):
            return True
    if isinstance(parsed.get("prompt"), dict):  # a Responses prompt template stored by the provider
        return True
    if isinstance(tools, list):
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            kind = tool.get("type")
            if isinstance(kind, str) and kind.startswith(_HOSTED_TOOL_TYPES):
                return True
            if not _HOSTED_TOOL_KEYS.isdisjoint(tool):
                return True
    return False


def _positive(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _choices(parsed: dict[str, Any]) -> int:
    choices = max(_positive(parsed.get("n")), _positive(parsed.get("best_of")))
    config = parsed.get("generationConfig", parsed.get("generation_config"))
    if isinstance(config, dict):
        choices = max(choices, _positive(config.get("candidateCount", config.get("candidate_count"))))
    return choices
