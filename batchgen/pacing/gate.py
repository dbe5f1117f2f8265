"""The first-answer gate: one request goes out alone, until the endpoint has shown it answers.

A wrong key or model id then costs one request, whatever the concurrency. Key and model errors
come back within a second, while a generation takes tens of seconds, so the gate does not wait
for the whole generation: it opens as soon as the probe has an answer, or once the probe has been
out :data:`RELEASE_AFTER_S` seconds with none (then the key and model were accepted). A good run
loses those seconds at most, not a whole generation.

An attempt that ends without an answer (a reference that would not load, a timeout, a dropped
connection) hands the probe on to the next attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..aio import Clock, Stopped, wait_event

log = logging.getLogger(__name__)

# Key and model errors are checked before any generation and come back within a second (issue 8);
# the release time is all a good run loses (bench/RESULTS.md, "Pacing: RELEASE_AFTER_S"). A proxy
# slower than that at refusing a key costs a few more refused requests, which are not billed.
RELEASE_AFTER_S = 1.0
# Waiters look at the stop flag at least this often.
_POLL_S = 0.25


class FirstAnswerGate:
    def __init__(
        self,
        stop: asyncio.Event,
        *,
        release_after_s: float = RELEASE_AFTER_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._stop = stop
        self.release_after_s = release_after_s
        self._clock = clock
        self._open = False
        self._probing = False
        self._probe_sent_at: float | None = None
        self._changed = asyncio.Event()
        self.released_early = False

    @property
    def is_open(self) -> bool:
        return self._open

    async def enter(self) -> bool:
        """Wait for the gate; True if this attempt is the probe."""
        while not self._open:
            if self._stop.is_set():
                raise Stopped
            if not self._probing:
                self._probing = True
                self._probe_sent_at = None
                return True
            wait = _POLL_S
            if self._probe_sent_at is not None:
                left = self._probe_sent_at + self.release_after_s - self._clock()
                if left <= 0:
                    self._open = self.released_early = True
                    log.debug("first answer gate: probe out %.1fs, opening", self.release_after_s)
                    break
                wait = min(wait, left)
            await wait_event(self._changed, wait)
        return False

    def sent(self) -> None:
        """The probe's request is leaving now: the release timer starts."""
        if self._probing and not self._open and self._probe_sent_at is None:
            self._probe_sent_at = self._clock()
            self._wake()

    def leave(self, *, answered: bool) -> None:
        """The probe's attempt is over; ``answered``: the endpoint answered it."""
        self._probing = False
        self._probe_sent_at = None
        self._open = self._open or answered
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
