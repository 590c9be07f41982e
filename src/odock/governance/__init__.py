"""Governance: multi-scope rate limits, quotas and budgets with reservations, and exact cost.

The pipeline calls `Governance` (pre_auth → early → final → complete); `pricing.cost_nanos` prices usage.
"""

from odock.governance.core import Governance, Receipt
from odock.governance.pricing import cost_nanos, worst_case_nanos

__all__ = ["Governance", "Receipt", "cost_nanos", "worst_case_nanos"]
