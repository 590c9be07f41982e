"""The admin service: every catalogue change and report, shared by the admin API, the CLI and `odock apply`.

A facade over modules split by idea: `validation` (inputs as msgspec Structs), `crud` (`CatalogueService`),
`reports` (usage summaries) and `keys` (key secrets and their one hash).
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec

from odock.providers.registry import PROVIDER_TYPES
from odock.state.crud import CatalogueService, CreatedKey, KeyInfo, KeyRotation, ProviderInfo, conflict
from odock.state.keys import KEY_PREFIX, generate_secret, hash_key, key_preview
from odock.state.records import KeyType, ModelType
from odock.state.reports import GROUP_BY, UsageSummaryRow
from odock.state.validation import parse_datetime

KEY_TYPES: tuple[str, ...] = get_args(KeyType)
MODEL_TYPES: tuple[str, ...] = get_args(ModelType)


def to_json(value: Any) -> Any:
    """Convert records and info structs to JSON-ready builtins (datetimes as ISO 8601)."""
    return msgspec.to_builtins(value)


__all__ = [
    "GROUP_BY",
    "KEY_PREFIX",
    "KEY_TYPES",
    "MODEL_TYPES",
    "PROVIDER_TYPES",
    "CatalogueService",
    "CreatedKey",
    "KeyInfo",
    "KeyRotation",
    "ProviderInfo",
    "UsageSummaryRow",
    "conflict",
    "generate_secret",
    "hash_key",
    "key_preview",
    "parse_datetime",
    "to_json",
]
