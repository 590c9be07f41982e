"""The gateway's resources (store, Redis, governance, transport, workers), registered once where they are opened.

`aclose()` closes them all in reverse order of registration, and a close that fails is logged and does not stop
the others (svcs `Registry.aclose()`); `ready()` answers the readiness probe from the registered pings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("odock.services")
T = TypeVar("T")
Close = Callable[[], Awaitable[None]]
Ping = Callable[[], Awaitable[None]]
# a readiness probe must answer even when a dependency hangs
PING_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Service:
    """One registered resource: how to close it, and how to ask it whether it can serve (optional)."""

    name: str
    close: Close | None
    ping: Ping | None


class Services:
    """Resources in the order they were opened."""

    def __init__(self) -> None:
        self._services: list[Service] = []

    def register(self, name: str, resource: T, *, close: Close | None = None, ping: Ping | None = None) -> T:
        """Record an opened resource under a unique name and return it, so it can be registered where it is made."""
        if any(service.name == name for service in self._services):
            raise ValueError(f"service {name!r} is already registered")
        self._services.append(Service(name, close, ping))
        return resource

    @property
    def names(self) -> list[str]:
        """The registered names, in order of registration."""
        return [service.name for service in self._services]

    async def aclose(self) -> None:
        """Close every resource, last registered first; log a failing close and carry on with the others."""
        services, self._services = self._services, []
        for service in reversed(services):
            if service.close is None:
                continue
            try:
                await service.close()
            except Exception:
                log.exception("closing %s failed", service.name)

    async def ready(self) -> dict[str, bool]:
        """Ping every resource that has a ping, concurrently; each answers True when its ping returned in time."""
        pinged = [service for service in self._services if service.ping is not None]
        results = await asyncio.gather(*(_answers(service) for service in pinged))
        return {service.name: ok for service, ok in zip(pinged, results, strict=True)}


async def _answers(service: Service) -> bool:
    assert service.ping is not None
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            await service.ping()
    except Exception as exc:
        log.debug("readiness: %s is unavailable (%s)", service.name, type(exc).__name__)
        return False
    return True
