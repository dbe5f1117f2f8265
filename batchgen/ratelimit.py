"""Pacing: sliding-window rate limits and TCP-style adaptive concurrency.

``--rpm`` / ``--ipm`` are sliding windows kept a little stricter than the server's so that, set at
the server's limit, they never draw a 429. With no limit set, :class:`AdaptiveLimit` halves the
requests in flight on a 429 and adds one back per window of successes (AIMD), so one 429 slows
the run instead of freezing every worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

log = logging.getLogger(__name__)

# Requests leave here before they reach the server; a small margin absorbs that skew.
WINDOW_MARGIN_S = 0.05
WINDOW_MARGIN_SHARE = 0.01


class Stopped(Exception):
    """The run is stopping while this attempt waited for its turn."""


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``event`` was set meanwhile."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        return False
    return True


class SlidingWindow:
    """At most ``limit`` acquisitions in any ``window_s`` seconds."""

    def __init__(self, limit: float, window_s: float = 60.0) -> None:
        self.limit = max(int(limit), 1)
        self.window_s = window_s + max(WINDOW_MARGIN_S, window_s * WINDOW_MARGIN_SHARE)
        self._stamps: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self, stop: asyncio.Event) -> None:
        """Wait for a free place in the window; raise :class:`Stopped` if the run stops first."""
        # The lock makes waiters queue in order instead of waking together and racing.
        async with self._lock:
            while True:
                if stop.is_set():
                    raise Stopped
                now = time.monotonic()
                while self._stamps and now - self._stamps[0] >= self.window_s:
                    self._stamps.popleft()
                if len(self._stamps) < self.limit:
                    self._stamps.append(now)
                    return
                await wait_event(stop, self.window_s - (now - self._stamps[0]) + 0.001)


class AdaptiveLimit:
    """A semaphore whose size follows additive-increase / multiplicative-decrease."""

    def __init__(self, maximum: int, *, adaptive: bool = True) -> None:
        self.maximum = max(maximum, 1)
        self.adaptive = adaptive
        self.limit = float(self.maximum)
        self.in_flight = 0
        self.decreases = 0
        self._cond = asyncio.Condition()
        self._last_decrease = 0.0

    @property
    def current(self) -> int:
        return max(int(self.limit), 1)

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.current)
            self.in_flight += 1

    async def release(self) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def on_success(self) -> None:
        if self.adaptive and self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1.0 / self.current)

    def on_rate_limited(self, retry_after: float | None) -> None:
        if not self.adaptive:
            return
        now = time.monotonic()
        # A burst of 429s from one overfull window is one signal, not many.
        if now - self._last_decrease < max(retry_after or 0.0, 0.5):
            return
        self._last_decrease = now
        self.limit = max(1.0, self.limit / 2)
        self.decreases += 1
        log.debug("429: concurrency lowered to %d", self.current)

    async def __aenter__(self) -> AdaptiveLimit:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class FirstAnswerGate:
    """Until the endpoint has answered once, only one request is out.

    A wrong key or model id then costs one request, whatever the concurrency. An attempt that
    ends without an answer (a reference that would not load, a timeout) hands the probe on.
    """

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._cond = asyncio.Condition()
        self._open = False
        self._probing = False

    async def enter(self) -> bool:
        """True if this attempt is the probe."""
        if self._open:
            return False
        async with self._cond:
            while not self._open:
                if self._stop.is_set():
                    raise Stopped
                if not self._probing:
                    self._probing = True
                    return True
                # Woken by the probe's end, or at the latest soon after a stop.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), timeout=0.5)
        return False

    async def leave(self, *, answered: bool) -> None:
        async with self._cond:
            self._probing = False
            self._open = self._open or answered
            self._cond.notify_all()


async def _wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True if ``event`` was set meanwhile."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        return False
    return True
