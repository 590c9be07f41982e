"""MCP catalogue tables on the shared `metadata` (migration 0006_mcp_servers creates them).

mcp_servers      one upstream MCP server: slug unique per organisation, transport, upstream auth (encrypted), tool
                 rules, pricing, a rate-limit policy under the MCP scope, optional team / key scope.
key_mcp_grants   which key may call which server (deny by default; a model grant never implies one).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, ForeignKey, String, Table, Text, UniqueConstraint

from odock.state.schema import ID, JsonType, UTCDateTime, metadata, utcnow

mcp_servers = Table(
    "mcp_servers",
    metadata,
    Column("id", ID, primary_key=True),
    Column("organisation_id", ID, ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False),
    # scopes (reference §11.2): when set, only keys of this team / this key reach the server
    Column("team_id", ID, nullable=True),
    Column("api_key_id", ID, nullable=True),
    Column("name", String(200), nullable=False),
    Column("slug", String(200), nullable=False),
    Column("description", String(2000), nullable=False, default=""),
    Column("transport", String(16), nullable=False),  # STREAMABLE_HTTP | SSE | STDIO
    Column("endpoint_url", String(2000), nullable=True),
    Column("stdio_command", String(2000), nullable=True),
    Column("stdio_args", JsonType, nullable=False, default=list),
    # AES-256-GCM envelopes (odock.state.crypto) of JSON objects; never the clear values
    Column("stdio_env_encrypted", Text, nullable=True),
    Column(
        "auth_type", String(16), nullable=False, default="NONE"
    ),  # NONE | HEADER | BEARER | BASIC | OAUTH2
    Column("auth_encrypted", Text, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("allowed_tools", JsonType, nullable=False, default=list),
    Column("blocked_tools", JsonType, nullable=False, default=list),
    Column("semantic_filter", JsonType, nullable=False, default=dict),
    Column("pricing", JsonType, nullable=False, default=dict),
    Column("policies", JsonType, nullable=False, default=dict),
    Column("config", JsonType, nullable=False, default=dict),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow),
    UniqueConstraint("organisation_id", "slug"),
)

key_mcp_grants = Table(
    "key_mcp_grants",
    metadata,
    Column("api_key_id", ID, ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "mcp_server_id", ID, ForeignKey("mcp_servers.id", ondelete="CASCADE"), primary_key=True, index=True
    ),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
)

MCP_TABLES = (mcp_servers, key_mcp_grants)
