"""A usage record for the ledger writer's tests: every kind of column filled (numbers, JSON, nulls)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from odock.state.records import UsageRecord


def usage_record(n: int, **changes: Any) -> UsageRecord:
    """Record `r{n}`, with `changes` applied."""
    record = UsageRecord(
        request_id=f"r{n}",
        created_at=datetime.now(UTC),
        organisation_id="org",
        api_key_id="key",
        route="openai.chat",
        status=200,
        outcome="success",
        model="m",
        input_tokens=n,
        output_tokens=2 * n,
        cost_nanos=1000 + n,
        pricing={"input": 1.5},
        raw_usage={"prompt_tokens": n},
        routing={"decision": "direct", "attempts": []},
    )
    return msgspec.structs.replace(record, **changes) if changes else record
