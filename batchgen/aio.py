"""The asyncio vocabulary the pipeline's parts share: a clock type, the stop signal, an event
wait with a timeout, and the hard cap on requests in flight.

Here rather than in the pacer so that the gate, the attempt and batch mode can use them without
importing pacing (tenacity's ``nap.py`` and aiolimiter keep their clocks apart the same way).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# Seconds from a monotonic clock; tests inject a fake one.
Clock = Callable[[], float]


class Stopped(Exception):
    """The run is stopping while this attempt waited for its turn."""


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``event`` was set meanwhile."""
    try:
        await asyncio.wait_for(event.wait(), timeout=max(seconds, 0.0))
    except asyncio.TimeoutError:
        return False
    return True


class ConcurrencyCap:
    """At most ``maximum`` requests in flight: the hard cap, which pacing never raises."""

    def __init__(self, maximum: int) -> None:
        self.maximum = max(int(maximum), 1)
        self.in_flight = 0
        self._slots = asyncio.Semaphore(self.maximum)

    async def __aenter__(self) -> ConcurrencyCap:
        await self._slots.acquire()
        self.in_flight += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.in_flight -= 1
        self._slots.release()

