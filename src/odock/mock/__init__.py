"""The mock LLM provider (`odock mock-upstream`): OpenAI, Anthropic, Gemini and vLLM wire formats, offline."""

from odock.mock.directives import Directives, MockDefaults
from odock.mock.server import MockApp, create_app, run

__all__ = ["Directives", "MockApp", "MockDefaults", "create_app", "run"]
