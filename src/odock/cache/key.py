"""The cache key: a hash of a canonical encoding of everything that can change an answer.

The request body goes in whole, minus a short explicit list of fields that never change the answer; so a field a
provider adds tomorrow is in the key by default, never forgotten (the peers' bug: keys built from an allow-list
of fields that missed tools, response_format, seed, stop, Responses parameters).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

# top-level request fields that never change the answer: how it is delivered (stream, stream_options: a cached
# stream answers a unary call and vice versa), who asks (user, safety_identifier: end-user ids for abuse
# tracking), bookkeeping (metadata, request ids)
IGNORED_FIELDS = frozenset(
    {"stream", "stream_options", "user", "safety_identifier", "metadata", "request_id"}
)

_encode = msgspec.json.Encoder(order="sorted").encode


def canonical_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the key sees it."""
    return {name: value for name, value in body.items() if name not in IGNORED_FIELDS}


def cache_key(
    *,
    dialect: str,
    provider: str,
    slug: str,
    model: str,
    organisation: str,
    key: str | None,
    namespace: str,
    body: dict[str, Any],
) -> str:
    """The entry's key: sha256 over a canonical (sorted keys, no whitespace) JSON array of the parts."""
    parts = [1, dialect, provider, slug, model, organisation, key, namespace, canonical_body(body)]
    return hashlib.sha256(_encode(parts)).hexdigest()
