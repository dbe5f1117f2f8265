"""Pacing: when the next request may leave.

Two modes, one interface (:class:`Pacing`):

- **A limit is given** (``--rpm`` / ``--ipm``): a GCRA pacer lets one request leave every
  ``window / limit`` seconds, with a small burst allowance (``--burst``). Real limiters smooth
  their quota over seconds, not a neat minute, so spreading the quota evenly is what keeps them
  from refusing it. The interval carries a small margin for the time a request takes to reach the
  server, and each refused window stretches it a little more (at most :data:`MAX_STRETCH`).
- **No limit given**: the pacer starts open (only the concurrency cap applies). The first 429 cuts
  the rate to :data:`BETA` of the rate measured over the last seconds; it then grows back
  along a CUBIC curve, as the AWS SDKs' "adaptive" retry mode does. One refused window is one
  signal: 429s for requests sent before the last cut say nothing new. A second 429 inside the
  window the server named confirms the limiter is full, and sends are held until the time it
  named, instead of being spent on refusals.

Retries go through the same pacer as first attempts. The attempt that got a 429 still waits the
delay the server asked for (tenacity's wait, in the pool); the others carry on at the new rate.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# --burst's default. A burst of N is N - 1 requests over the limit in a short window: at 12 per
# 1-s or 2-s window, --burst 2 drew a 429 in every run and reached 0.95 of the limit, --burst 1
# none and 0.97 (late sends are made up by FIXED_CATCH_UP_S instead). ARCHITECTURE.md, "Pacing".
DEFAULT_BURST = 1
# Requests are stamped here and counted by the server on arrival, a few milliseconds later and
# not always equally later. The interval is this share longer than the limit's, which leaves 30 ms
# of slack in every second: a limiter with a window of 1 s or more never sees limit + 1 unless
# arrival jitter passes 20 ms (with 2%, one run in the full suite at load 9 drew a 429 at 10 a
# second against 10 per 1 s).
MARGIN_SHARE = 0.03
# Lateness a request may make up for (see Gcra.take). With a fixed limit it must stay under the
# margin (30 ms a second), or 13 requests could land inside one second at 12 a second. Measured
# at --rpm 720 against 12 per 1 s, on 2 cores at load 10: no catch-up reached 0.93 of the limit
# (late wake-ups are lost), 10 ms reached 0.98 with no 429, 20 ms drew a 429 (margin 2% then).
# Adaptive pacing corrects itself from 429s, so it may catch up 20 ms.
FIXED_CATCH_UP_S = 0.01
CATCH_UP_S = 0.02
# Each refused window with a fixed limit stretches the interval by this share, up to MAX_STRETCH.
STRETCH_STEP = 0.02
MAX_STRETCH = 0.10

# Adaptive mode (no limit given).
BETA = 0.9  # a 429 cuts the rate to this share of the rate measured (AWS uses 0.7)
CUBIC_K_S = 2.0  # seconds for the rate to grow back to where it was cut, at least
MAX_CUBIC_K_S = 30.0
MEASURE_S = 2.0  # the send rate is measured over this many seconds
MIN_SPAN_S = 1.0  # ... but never over less: a burst let through in 50 ms is not a rate
MIN_RATE = 0.05  # requests a second: never slower than one every 20 s
# Without a delay from the server, a refused window is assumed to last this long.
DEFAULT_REFUSED_S = 1.0


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


class Gcra:
    """The generic cell rate algorithm, on an injected clock (no I/O: testable alone).

    ``tat`` is the theoretical arrival time of the next request. A request may leave when
    ``tat - now <= (burst - 1) * interval``; leaving pushes ``tat`` one interval on. After an
    idle spell up to ``burst`` requests may leave at once; at full speed, one per ``interval``.
    """

    def __init__(
        self, interval_s: float | None, burst: int, now: float, *, catch_up_s: float = 0.0
    ) -> None:
        self.interval_s = interval_s
        self.burst = max(int(burst), 1)
        self.catch_up_s = catch_up_s
        self.tat = self._no_credit(now)
        self.hold_until = now

    def _no_credit(self, now: float) -> float:
        # The burst is earned by idle time only, never handed out at the start: a limiter whose
        # window is as full as ours allows would refuse it.
        return now + (self.burst - 1) * (self.interval_s or 0.0)

    def delay(self, now: float) -> float:
        """Seconds until one more request may leave (0.0: now)."""
        held = self.hold_until - now
        if self.interval_s is None:
            return max(held, 0.0)
        tolerance = (self.burst - 1) * self.interval_s
        return max(self.tat - tolerance - now, held, 0.0)

    def take(self, now: float) -> None:
        if self.interval_s is not None:
            # A request that left a little late (a busy event loop) does not push every later
            # one back: up to catch_up_s of lateness is made up by the next.
            slack = min(self.catch_up_s, self.interval_s / 2)
            self.tat = max(self.tat, now - slack) + self.interval_s

    def set_interval(self, interval_s: float | None, now: float) -> None:
        if interval_s is not None and self.interval_s is None:
            self.interval_s = interval_s
            self.tat = self._no_credit(now)  # nothing saved up while unpaced
        elif interval_s is not None and self.interval_s is not None:
            # Requests already granted keep their places; the backlog beyond now is re-spaced.
            backlog = max(self.tat - now, 0.0) / self.interval_s
            self.tat = now + backlog * interval_s
        self.interval_s = interval_s


class SendLog:
    """Send times over the last :data:`MEASURE_S` seconds, for the measured send rate."""

    def __init__(self, horizon_s: float = MEASURE_S) -> None:
        self.horizon_s = horizon_s
        self._sent: collections.deque[float] = collections.deque()
        self._first: float | None = None

    def add(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._sent.append(now)
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - self.horizon_s:
            self._sent.popleft()

    def rate(self, now: float, held: Iterable[tuple[float, float]] = ()) -> float:
        """Requests a second over the horizon (or since the first send, if that is shorter),
        leaving out the ``held`` spells (start, end) when nothing was allowed to leave."""
        self._prune(now)
        if self._first is None:
            return 0.0
        # Never over less than MIN_SPAN_S: limiter windows are a second or more, and a burst
        # they let through in a few milliseconds is not a rate.
        span = min(self.horizon_s, max(now - self._first, MIN_SPAN_S))
        idle = sum(max(0.0, min(end, now) - max(start, now - span)) for start, end in held)
        return len(self._sent) / max(span - idle, MIN_SPAN_S)


@dataclass(slots=True)
class Cubic:
    """CUBIC growth after a cut: back to ``w_max`` in ``k_s`` seconds, then beyond, slowly."""

    w_max: float
    cut_at: float
    beta: float = BETA
    k_s: float = CUBIC_K_S

    def rate(self, now: float) -> float:
        x = (now - self.cut_at) / self.k_s - 1.0
        return self.w_max * (1.0 + (1.0 - self.beta) * x**3)


class Pacing:
    """The pacer the pool talks to: ``acquire`` before a send, then report the outcome."""

    def __init__(
        self,
        rate_per_s: float | None,
        *,
        burst: int = DEFAULT_BURST,
        adaptive: bool | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.clock = clock
        now = clock()
        self.limit_per_s = rate_per_s
        self.adaptive = rate_per_s is None if adaptive is None else adaptive
        self.stretch = 0.0
        catch_up = CATCH_UP_S if self.adaptive else FIXED_CATCH_UP_S
        self.gcra = Gcra(self._interval(), burst, now, catch_up_s=catch_up)
        self.sends = SendLog()
        self.admitted = SendLog()  # answers that were not 429, by the time they came back
        self._held: collections.deque[tuple[float, float]] = collections.deque(maxlen=8)
        self.cubic: Cubic | None = None
        self.cut_at = -math.inf  # 429s for requests sent before this say nothing new
        self.refused_until = -math.inf
        self.cuts = 0
        self.holds = 0
        self._first_cut = False
        # Send times of answered (not 429) requests, for the first cut's estimate.
        self._admitted_sent: collections.deque[float] = collections.deque(maxlen=100_000)
        self._first_429: tuple[float, float] | None = None  # (sent_at, delay) of the first cut
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    @classmethod
    def for_limits(
        cls,
        rpm: float | None,
        ipm: float | None,
        *,
        window_s: float = 60.0,
        burst: int = DEFAULT_BURST,
    ) -> Pacing:
        """``--rpm`` / ``--ipm`` over ``window_s``; every request asks for one image."""
        limits = [n for n in (rpm, ipm) if n]
        if not limits:
            return cls(None, burst=burst)
        return cls(min(limits) / window_s, burst=burst)

    # -- the rate ---------------------------------------------------------------------------

    @property
    def rate_per_s(self) -> float | None:
        interval = self.gcra.interval_s
        return None if interval is None else 1.0 / interval

    def _interval(self) -> float | None:
        if self.limit_per_s is None:
            return None
        return (1.0 + MARGIN_SHARE + self.stretch) / self.limit_per_s

    def _set_rate(self, rate: float | None, now: float) -> None:
        interval = None if rate is None else 1.0 / max(rate, MIN_RATE)
        self.gcra.set_interval(interval, now)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- sending ----------------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> float:
        """Wait for this request's turn; returns its send time. :class:`Stopped` if stopping."""
        # The lock makes waiters queue in order instead of waking together and racing.
        async with self._lock:
            while True:
                if stop.is_set():
                    raise Stopped
                now = self.clock()
                wait = self.gcra.delay(now)
                if wait <= 0:
                    self.gcra.take(now)
                    self.sends.add(now)
                    return now
                if wait > 1.0:
                    log.debug("pacing: next send in %.2fs (rate %s, held %.2fs)", wait,
                              self.rate_per_s, max(self.gcra.hold_until - now, 0.0))
                # Woken early by a change of rate; looks at the stop flag at least every 0.25 s.
                await wait_event(self._changed, min(wait, 0.25))

    # -- outcomes ---------------------------------------------------------------------------

    def on_answer(self, sent_at: float) -> None:
        """An answer that was not a 429: in adaptive mode the rate grows back."""
        if not self.adaptive:
            return
        now = self.clock()
        self.admitted.add(now)
        if self.rate_per_s is None or self._first_cut:
            self._admitted_sent.append(sent_at)
        if self.cubic is None:
            return
        if self._first_cut and sent_at < self.cut_at:
            # The unpaced start's answers are still coming in: the first cut was made on a
            # partial count of what the server let through. Raise it as they arrive.
            w_max = max(self.cubic.w_max, self._start_estimate(now))
            if w_max > self.cubic.w_max:
                self.cubic.w_max = w_max
                self._set_rate(self.cubic.beta * w_max, now)
            return
        # Never more than twice what is actually sent: a latency-bound run must not bank a rate
        # it has never tried.
        target = min(self.cubic.rate(now), 2.0 * max(self.sends.rate(now), MIN_RATE))
        current = self.rate_per_s or 0.0
        if target > current:
            self._set_rate(target, now)

    def _start_estimate(self, now: float) -> float:
        """What the server allows, judged from the unpaced start.

        With a delay from the server: a limiter that refused a request sent at ``s``, asking to
        wait ``d``, is full until ``s + d`` with what it let through since about ``s - d`` (an
        unpaced start sends everything at once, so its window is about ``d`` long). That is a
        rate of (requests let through that were sent in that span) / ``d``, whatever the
        window's length. Without one: what was let through over the last seconds.
        """
        if self._first_429 is None:
            return self.admitted.rate(now, self._held)
        s, d = self._first_429
        let_through = sum(1 for t in self._admitted_sent if s - d < t <= s)
        return max(let_through, 1) / d

    def on_rate_limited(self, sent_at: float, delay_s: float | None) -> None:
        """A 429 for a request that left at ``sent_at``, asking to wait ``delay_s`` (or not)."""
        now = self.clock()
        if sent_at < self.cut_at:
            return  # sent before the last cut: part of the window already answered for
        if now < self.refused_until:
            # Sent after the cut and still refused: the limiter is full until the time it named.
            until = now + (delay_s if delay_s is not None else DEFAULT_REFUSED_S / 2)
            if until > self.gcra.hold_until:
                self._held.append((max(now, self.gcra.hold_until), until))
                self.gcra.hold_until = until
                self.holds += 1
                log.debug("429 again inside the refused window: holding sends %.2fs", until - now)
                self._wake()
            return
        # Spells when sends were held are left out: over them the rates would read low.
        sent, admitted = self.sends.rate(now, self._held), self.admitted.rate(now, self._held)
        current = self.rate_per_s
        if self.adaptive and current is None and admitted == 0:
            # Nothing let through yet: no rate to cut from (one 429 on the first request is no
            # measure of anything). This attempt waits what it was told; the others go on.
            return
        self.cuts += 1
        self._first_cut = current is None
        self.cut_at = now
        self.refused_until = now + (delay_s if delay_s is not None else DEFAULT_REFUSED_S)
        if not self.adaptive:
            # A fixed limit that still draws a 429: arrival jitter, or a limiter slightly
            # stricter than the one given. Stretch the interval a little, up to MAX_STRETCH.
            if self.stretch < MAX_STRETCH:
                self.stretch = min(MAX_STRETCH, self.stretch + STRETCH_STEP)
                self.gcra.set_interval(self._interval(), now)
                log.debug("429 at the given limit: interval stretched by %.0f%%",
                          100 * self.stretch)
            return
        if current is None:
            # The first 429 of an unpaced start: what was sent (refusals included) can be many
            # times what the server allows; what it let through is the better guess.
            self._first_429 = (sent_at, delay_s) if delay_s else None
            w_max = self._start_estimate(now)
        else:
            # Paced: the rate that drew the 429, or what was really sent or let through lately
            # if that was less; never less than half of it in one cut, as TCP.
            measured = min(sent, admitted if admitted > 0 else sent)
            w_max = max(min(current, measured), current / 2)
        w_max = max(w_max, MIN_RATE)
        # Grow back over about one limiter window (the first cut's delay tells its length): a
        # long window reports an excess late, so a rate that grows faster overshoots far.
        k_s = CUBIC_K_S
        if self._first_429 is not None:
            k_s = min(max(CUBIC_K_S, self._first_429[1]), MAX_CUBIC_K_S)
        self.cubic = Cubic(w_max=w_max, cut_at=now, k_s=k_s)
        self._set_rate(BETA * w_max, now)
        log.debug("429: send rate cut to %.2f/s (admitted %.2f/s, sent %.2f/s)",
                  BETA * w_max, admitted, sent)
