"""Odock: an LLM gateway."""
