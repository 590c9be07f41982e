"""Governance tables (SQLAlchemy Core) on the shared catalogue `metadata`; migration 0002_governance creates them.

budgets / quotas           definitions (owner ORG/TEAM/USER/APIKEY + owner id, period, schedule, amount/limit)
governance_windows         one row per (definition, window start): the durable settled `used` (PostgreSQL is the
                           ledger in cluster mode; SQLite in embedded mode). `reserved` lives only in Redis/memory.
governance_charges         one row per (reservation, window): the settled amount — makes settle idempotent and lets
                           reconciliation settle a crashed call from the ledger (embedded mode: one row per window
                           per write-behind flush). Pruned once older than any reservation can live.
budget_events              threshold crossings (50/80/90/100 % …), one per (window, threshold), and overspends (a
                           call charged above its reservation), one per (window, request); migration 0005.

Owners are plain ids (no foreign keys), so governance never blocks catalogue deletes; a definition whose owner is
gone simply never matches.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)

from odock.state.schema import JsonType, UTCDateTime, metadata

budgets = Table(
    "budgets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("owner_type", String(16), nullable=False),  # ORG | TEAM | USER | APIKEY
    Column("owner_id", String(64), nullable=False),
    Column("organisation_id", String(64), nullable=True),
    Column("period", String(16), nullable=False),  # DAILY | WEEKLY | MONTHLY | QUARTERLY
    Column("start_at", UTCDateTime(), nullable=True),
    Column("end_at", UTCDateTime(), nullable=True),
    Column("timezone", String(64), nullable=False, default=""),  # "" = the owner's time zone
    Column("currency", String(8), nullable=False, default="USD"),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("thresholds", JsonType, nullable=False),
    Column("rollover", Boolean, nullable=False, default=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_budgets_owner", "owner_type", "owner_id"),
)

quotas = Table(
    "quotas",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("owner_type", String(16), nullable=False),
    Column("owner_id", String(64), nullable=False),
    Column("organisation_id", String(64), nullable=True),
    Column(
        "metric", String(16), nullable=False
    ),  # REQUESTS | TOKENS | TOKENS_IN | TOKENS_OUT | ERRORS | COST | LATENCY_MS
    Column("limit_value", BigInteger, nullable=False),
    Column("period", String(16), nullable=False),
    Column("start_at", UTCDateTime(), nullable=True),
    Column("end_at", UTCDateTime(), nullable=True),
    Column("timezone", String(64), nullable=False, default=""),  # "" = the owner's time zone
    Column("rollover", Boolean, nullable=False, default=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_quotas_owner", "owner_type", "owner_id"),
)

governance_windows = Table(
    "governance_windows",
    metadata,
    Column("window_key", String(128), primary_key=True),  # "<b|q>:<definition id>:<start epoch s>"
    Column("kind", String(8), nullable=False),  # budget | quota
    Column("definition_id", String(40), nullable=False),
    Column("start_at", UTCDateTime(), nullable=False),
    Column("end_at", UTCDateTime(), nullable=False),
    Column("limit_value", BigInteger, nullable=False),
    Column("used", BigInteger, nullable=False, default=0),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_governance_windows_definition", "definition_id", "start_at"),
)

governance_charges = Table(
    "governance_charges",
    metadata,
    Column("reservation_id", String(128), nullable=False),
    Column("window_key", String(128), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("reservation_id", "window_key", name="pk_governance_charges"),
    Index("ix_governance_charges_created", "created_at"),  # retention: pruned by age (migration 0003)
)

budget_events = Table(
    "budget_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("budget_id", String(40), nullable=False),
    Column("window_key", String(128), nullable=False),
    Column("threshold", Integer, nullable=False),
    Column("used_nanos", BigInteger, nullable=False),
    Column("amount_nanos", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # "threshold": a crossing, once per (window, threshold); "overspend": one call charged above its reservation
    # (threshold then holds the window's percentage used after it), once per (window, request)
    Column("kind", String(16), nullable=False, server_default="threshold"),
    Column("request_id", String(128), nullable=False, server_default=""),
    Column("reserved_nanos", BigInteger, nullable=True),
    Column("charged_nanos", BigInteger, nullable=True),
    UniqueConstraint("window_key", "kind", "threshold", "request_id", name="uq_budget_events_event"),
    Index("ix_budget_events_budget", "budget_id", "created_at"),
)

GOVERNANCE_TABLES = (budgets, quotas, governance_windows, governance_charges, budget_events)
