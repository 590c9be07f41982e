"""Per-process deployment health: consecutive failures (cooldowns) and a moving latency window (least_latency).

State is keyed by model id (one deployment = one Odock model record) and lives in this process only: each
gateway process learns health from its own attempts. That is deliberate: a cooldown is a local, short-lived
guess about an upstream, and sharing it would add a Redis round trip to every attempt for little gain.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

DEFAULT_COOLDOWN_FAILURES = 3
DEFAULT_COOLDOWN_S = 30.0
LATENCY_WINDOW = 20  # attempts kept per deployment for the moving average
MAX_DEPLOYMENTS = 10_000  # bound on tracked deployments; the least recently touched go first


@dataclass(slots=True)
class DeploymentHealth:
    failures: int = 0  # consecutive failures attributable to the deployment
    last_failure: float = 0.0  # monotonic time of the latest failure
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


class HealthBook:
    """Consecutive failures and latency windows of every deployment this process has called."""

    def __init__(self) -> None:
        self._items: dict[str, DeploymentHealth] = {}
        self._now = time.monotonic

    def _entry(self, model_id: str) -> DeploymentHealth:
        item = self._items.pop(model_id, None)
        if item is None:
            if len(self._items) >= MAX_DEPLOYMENTS:
                self._items.pop(next(iter(self._items)))
            item = DeploymentHealth()
        self._items[model_id] = item  # re-insert: dict order doubles as least-recently-touched order
        return item

    def success(self, model_id: str, latency_s: float) -> None:
        """Record a successful attempt: the failure streak ends and the latency joins the window."""
        item = self._entry(model_id)
        item.failures = 0
        item.latencies.append(latency_s)

    def failure(self, model_id: str, latency_s: float | None = None) -> None:
        """Record a failure of the deployment itself (5xx, timeout, rate limit, broken connection)."""
        item = self._entry(model_id)
        item.failures += 1
        item.last_failure = self._now()
        if latency_s is not None:
            # a timed-out attempt was at least this slow: keep it in the window so least_latency sees it
            item.latencies.append(latency_s)

    def cooling(self, model_id: str, threshold: int, cooldown_s: float) -> bool:
        """Whether the deployment failed `threshold` times in a row within the last `cooldown_s` seconds.

        Once the cooldown has passed the deployment is eligible again (a probe): a success resets the streak,
        another failure starts a fresh cooldown at once because the streak is still at or above the threshold.
        """
        item = self._items.get(model_id)
        if item is None or threshold <= 0 or item.failures < threshold:
            return False
        return self._now() - item.last_failure < cooldown_s

    def latency(self, model_id: str) -> float | None:
        """The moving average latency (seconds to response headers), or None when never observed."""
        item = self._items.get(model_id)
        if item is None or not item.latencies:
            return None
        return sum(item.latencies) / len(item.latencies)

    def failures(self, model_id: str) -> int:
        item = self._items.get(model_id)
        return item.failures if item is not None else 0

    def clear(self) -> None:
        self._items.clear()
