"""The most an honest provider can bill for one call, known before the call: what budgets and quotas reserve.

Input tokens are bounded by
  - the request body's UTF-8 bytes (a token of any tokenizer covers at least one byte of text; the JSON around the
    text covers the few tokens a provider adds per message),
  - plus `tool_overhead_tokens` when the request defines tools (Anthropic adds a tool-use system prompt of up to
    ~350 tokens, and up to ~1,200 more for its computer-use tools; default 2,048),
  - plus `image_tokens` per image part: the provider family's documented per-image maximum (below),
  - plus `file_tokens` per file, document, audio or video part (default: the context window — a PDF, a recording
    or a video can fill it),
  - and never more than the model's `context_window` (default 1,048,576), which is also the whole bound when the
    provider adds input the request does not carry (a stored response or conversation, cached content, hosted
    search/retrieval tools).
Output tokens are bounded by the output cap (reasoning/thinking included: every provider bills it as output inside
`max_tokens` / `max_completion_tokens` / `max_output_tokens` / `maxOutputTokens`) times the number of choices.
With no cap in the request, the gateway reserves the tightest of the policies' `max_tokens`, the model's
`max_output_tokens` (default 4,096) and sends that cap upstream itself. Image generation reserves
`image_output_tokens` per image (default 6,240: gpt-image-1 at high quality, 1536×1024).

Per-model overrides live in the model's `config` (JSON): `max_output_tokens`, `context_window`, `image_tokens`,
`file_tokens`, `image_output_tokens`, `tool_overhead_tokens` (positive integers; anything else is ignored).
"""

from __future__ import annotations

from odock.dialects.prompt import PromptShape
from odock.governance.pricing import DEFAULT_MAX_TOKENS
from odock.providers.registry import PROVIDERS
from odock.state.records import ModelRecord

DEFAULT_CONTEXT_WINDOW = 1_048_576
DEFAULT_TOOL_OVERHEAD_TOKENS = 2_048
DEFAULT_IMAGE_OUTPUT_TOKENS = 6_240
# The documented per-image maximum of each provider family (input tokens):
#   openai     48,169 — gpt-4o-mini at high detail: 2,833 + 8 tiles × 5,667 (an image is scaled into 2048×2048, then
#              its short side to 768 px: at most 2×4 tiles of 512 px). gpt-4o/4.1 bill 85 + 8 × 170 = 1,445 for
#              the same image: configure `image_tokens` per model to reserve less.
#   anthropic  1,600 — images are scaled down past ~1.15 megapixels (1,568 px on the long edge): (w × h) / 750.
#   gemini     4,128 — 258 tokens per 768×768 tile, images scaled into 3072×3072: at most 16 tiles.
#   vllm       16,384 — self-hosted vision models differ (Qwen2-VL's default ceiling is 16,384 per image).
IMAGE_TOKENS = {"openai": 48_169, "anthropic": 1_600, "gemini": 4_128, "vllm": 16_384}
_MOST_IMAGE_TOKENS = max(IMAGE_TOKENS.values())  # an unknown family


def configured(model: ModelRecord | None, key: str) -> int | None:
    """A positive integer from the model's `config`, else None."""
    if model is None:
        return None
    value = model.config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def image_tokens(model: ModelRecord | None, provider_type: str | None) -> int:
    """Input tokens one image part can cost on this model."""
    entry = PROVIDERS.get(provider_type or "")
    family = entry.family if entry is not None else ""
    return configured(model, "image_tokens") or IMAGE_TOKENS.get(family, _MOST_IMAGE_TOKENS)


def input_bound(prompt: PromptShape, model: ModelRecord | None, provider_type: str | None) -> int:
    """The most input tokens an honest provider can bill for this prompt."""
    window = configured(model, "context_window") or DEFAULT_CONTEXT_WINDOW
    if prompt.hidden:
        return window
    bound = prompt.size
    if prompt.images:
        bound += prompt.images * image_tokens(model, provider_type)
    if prompt.files:
        bound += prompt.files * (configured(model, "file_tokens") or window)
    if prompt.tools:
        bound += configured(model, "tool_overhead_tokens") or DEFAULT_TOOL_OVERHEAD_TOKENS
    return bound if bound < window else window


def output_cap(requested: int | None, policy_caps: list[int], model: ModelRecord | None) -> tuple[int, bool]:
    """The output cap per choice, and whether the gateway chose it (the request named none)."""
    model_max = configured(model, "max_output_tokens")
    if requested is not None and requested > 0:
        return (model_max if model_max and model_max < requested else requested), False
    candidates = [*policy_caps, *([model_max] if model_max else [])]
    return (min(candidates) if candidates else DEFAULT_MAX_TOKENS), True


def image_output_tokens(model: ModelRecord | None) -> int:
    """Output tokens one generated image can cost."""
    return configured(model, "image_output_tokens") or DEFAULT_IMAGE_OUTPUT_TOKENS
