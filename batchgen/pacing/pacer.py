"""Pacing: when the next request may leave.

Two modes, one interface (:class:`Pacing`):

- **A limit is given** (``--rpm`` / ``--ipm``): a GCRA pacer lets one request leave every
  ``window / limit`` seconds, with a small burst allowance (``--burst``). Real limiters smooth
  their quota over seconds, not a neat minute, so spreading the quota evenly is what keeps them
  from refusing it. The interval carries a small margin for the time a request takes to reach the
  server, and each refused window stretches it a little more (at most :data:`MAX_STRETCH`).
- **No limit given**: the pacer starts open (only the concurrency cap applies). A 429 means the
  limiter was full when the refused request arrived: over its window it had let through all it
  allows. So the rate it allows is what it let through over the window before that request
  (:meth:`Pacing.allowed_rate`; sent minus refused, by send time, from :class:`Admissions`). The
  window is the longest delay the server has named (a sliding window's first refusal names about
  the whole window); with no delay named it is guessed, starting at 1 s and doubling each time
  the limiter stays shut all through the guess. The cut sets the rate to :data:`BETA` of that
  allowed rate; it then grows back along a CUBIC curve over about one window, as the AWS SDKs'
  "adaptive" retry mode does. One refused window is one signal: 429s for requests sent before
  the last cut only refine its count. Sends are held until the time the server named, since
  anything sent before then is a request spent on a refusal. A 429 that names no delay may be
  the service's overload, refused at random whatever the rate: it cuts only when it reads as a
  full limiter's (:mod:`batchgen.refusals`).

Retries go through the same pacer as first attempts. The attempt that got a 429 still waits the
delay the server asked for (tenacity's wait, in the pool); the others carry on at the new rate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from ..aio import Clock, Stopped, wait_event
from .rates import Admissions, Cubic, Gcra, SendLog
from .refusals import LastCut, ReaderSettings, Reading, RefusalReader
from .trial import Trials, Verdict
from .tuning import (
    ANSWER_K,
    BETA,
    CATCH_UP_S,
    CUBIC_K_S,
    DEFAULT_BURST,
    DEFAULT_WINDOW_S,
    EDGE_S,
    FIXED_CATCH_UP_S,
    FULL_SHARE,
    HOLD_MARGIN_S,
    MARGIN_SHARE,
    MAX_CUBIC_K_S,
    MAX_RUN,
    MAX_STRETCH,
    MAX_WINDOW_S,
    MEASURE_S,
    MIN_PER_WINDOW,
    MIN_QUIET_SENDS,
    MIN_RATE,
    MIN_SPAN_S,
    NOISE_FACTOR,
    PROBE_GROWTH,
    QUIET_KEPT,
    RUN_CHANCE,
    STRETCH_STEP,
    TRIAL_SETTINGS,
)
from .window import WindowEstimate

log = logging.getLogger(__name__)

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
        self.sends = SendLog(MEASURE_S, min_span_s=MIN_SPAN_S)
        self.admissions = Admissions(MAX_WINDOW_S)
        self.cubic: Cubic | None = None
        self.window = WindowEstimate(self.admissions, guess_s=DEFAULT_WINDOW_S,
                                     max_s=MAX_WINDOW_S, edge_s=EDGE_S, min_count=MIN_PER_WINDOW)
        self.cut_at = -math.inf  # 429s for requests sent before this say nothing new
        self._cut_from = -math.inf  # the sent_at the last cut measured back from
        self._cut_span = 0.0
        self._cut_rate: float | None = None  # the rate that drew the last cut's 429
        self._cut_delay: float | None = None  # and the delay it named
        self._cut_kind = Reading.OVERLOAD  # what the last cut's 429 was read as (no cut yet)
        self._kept = False  # the last cut kept the limit it was cut from (see _cut)
        self.reader = RefusalReader(self.admissions, ReaderSettings(
            run_chance=RUN_CHANCE, max_run=MAX_RUN, full_share=FULL_SHARE,
            noise_factor=NOISE_FACTOR, min_quiet_sends=MIN_QUIET_SENDS, quiet_kept=QUIET_KEPT,
        ))
        self.refused_until = -math.inf
        self.trials = Trials(self.admissions, TRIAL_SETTINGS)
        self._first_cut_at: float | None = None
        self._moved_at = -math.inf  # when a cut last moved the limit, not kept it
        self.answer_s = 0.0  # how long the last 429 took to come back
        self.cuts = 0
        self.holds = 0
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
                wait = self.try_send(now)
                if wait <= 0:
                    return now
                if wait > 1.0:
                    log.debug("pacing: next send in %.2fs (rate %s, held %.2fs)", wait,
                              self.rate_per_s, max(self.gcra.hold_until - now, 0.0))
                # Woken early by a change of rate; looks at the stop flag at least every 0.25 s.
                await wait_event(self._changed, min(wait, 0.25))

    def try_send(self, now: float) -> float:
        """Take the turn at ``now`` if it has come (0.0); else the seconds until it comes."""
        wait = max(self.gcra.delay(now), self.window.full_for(now, HOLD_MARGIN_S))
        if wait <= 0:
            self.gcra.take(now)
            self.sends.add(now)
            if self.adaptive:
                self.admissions.sent(now)
            return 0.0
        return wait

    # -- outcomes ---------------------------------------------------------------------------

    def on_answer(self, sent_at: float) -> None:
        """An answer that was not a 429: in adaptive mode the rate grows back."""
        if not self.adaptive or self.cubic is None:
            return
        now = self.clock()
        if self.trials.current is not None:
            self._judge_trial(sent_at, now)
            if self.trials.current is not None:
                return  # the trial's rate holds until its verdict
        # Never more than twice what is actually sent: a latency-bound run must not bank a rate
        # it has never tried.
        target = min(self.cubic.rate(now), 2.0 * max(self.sends.rate(now), MIN_RATE))
        current = self.rate_per_s or 0.0
        if target > current:
            self._set_rate(target, now)

    def allowed_rate(self, sent_at: float, span_s: float, delay_s: float | None = None) -> float:
        """What the limiter allows, a second, judged from a 429 for a request sent at
        ``sent_at``, with a window of ``span_s``.

        The limiter was full: over its window it had let through all it allows. With a delay
        named, the oldest request in that window leaves it ``delay_s`` after the refused one
        arrived, so it came ``span_s - delay_s`` before: the requests let through since then
        are the whole limit, and the rate is that count over the window. (Counted from the
        window's plain start instead, the oldest is missed as often as not: one request short
        is 8% of a limit of 12.) Over a longer span in which the limiter was kept full, the
        count still comes to the limit's rate.
        """
        count = self.admissions.admitted(sent_at - span_s, sent_at)
        if delay_s is not None:
            # The larger of the two: when arrivals lag their sends unevenly (a starved server
            # thread stamps a bunch at once), the named time points too late and counts too few.
            anchored = self.admissions.admitted(sent_at + delay_s - span_s - EDGE_S, sent_at)
            count = max(count, anchored)
        return max(count, 1) / span_s

    def _span(self) -> float:
        return max(self._window(), MIN_SPAN_S)

    def _window(self) -> float:
        return self.window.seconds

    @property
    def window_s(self) -> float | None:
        """The limiter's window learnt from the delays it named (None: none named yet)."""
        return self.window.learnt_s

    @property
    def guessed_window_s(self) -> float:
        return self.window.guessed_s

    def on_rate_limited(self, sent_at: float, delay_s: float | None) -> None:
        """A 429 for a request that left at ``sent_at``, asking to wait ``delay_s`` (or not).

        Times are send times: the server named its delay when the request arrived, and its
        answer may have taken as long as an image does.
        """
        now = self.clock()
        self.answer_s = now - sent_at
        if self.adaptive:
            self.admissions.refused(sent_at)
            self._learn_window(sent_at, delay_s)
            self._judge_trial(sent_at, now)
            if delay_s is None and self.cubic is not None and self._try(sent_at, now):
                return
        if sent_at < self.cut_at:
            # Sent before the last cut: part of the window already answered for.
            if self.adaptive and sent_at > self._cut_from - self._cut_span and not self._kept:
                self._refine(now)
            return
        reading = (
            Reading.NAMED if delay_s is not None or not self.adaptive
            else self.reader.read(sent_at, self._span(), self._last_cut())
        )
        if reading is Reading.OVERLOAD and not (
            sent_at < self.refused_until and self._cut_kind is Reading.SHUT
        ):
            # Overload, as far as can be told: this attempt backs off, the others go on.
            return
        if sent_at < self.refused_until:
            # Sent after the cut and still refused: the limiter is full until the time it named
            # (with none named, when the cut was for a limiter seen shut).
            if reading is not Reading.AT_LIMIT or self._cut_kind is Reading.SHUT:
                self._hold(sent_at + (delay_s if delay_s is not None else self._window() / 2), now)
            return
        if self.adaptive and self.cubic is None and not self.admissions.admitted(-math.inf, now):
            # Nothing let through yet: no rate to cut from (one 429 on the first request is no
            # measure of anything). This attempt waits what it was told; the others go on.
            return
        self.cuts += 1
        self.cut_at = now
        self.refused_until = sent_at + (delay_s if delay_s is not None else self._window())
        if self.adaptive:
            if delay_s is not None:
                # The limiter has named when it next lets one through: a send before then is a
                # request spent on a refusal.
                self._hold(sent_at + delay_s, now)
            log.debug("429 read as a full limiter: %s", reading.value)
            self._cut(sent_at, delay_s, now, reading)
        elif self.stretch < MAX_STRETCH:
            # A fixed limit that still draws a 429: arrival jitter, or a limiter slightly
            # stricter than the one given. Stretch the interval a little, up to MAX_STRETCH.
            self.stretch = min(MAX_STRETCH, self.stretch + STRETCH_STEP)
            self.gcra.set_interval(self._interval(), now)
            log.debug("429 at the given limit: interval stretched by %.0f%%", 100 * self.stretch)

    def _learn_window(self, sent_at: float, delay_s: float | None) -> None:
        over = sent_at >= self.refused_until
        if delay_s is None:
            self.window.unnamed(sent_at, cuts=self.cuts, cut_from=self._cut_from, window_over=over)
            return
        self.window.named(sent_at, delay_s, cuts=self.cuts, window_over=over)

    def _cut(self, sent_at: float, delay_s: float | None, now: float, kind: Reading) -> None:
        """The cut: to :data:`BETA` of the allowed rate, from which CUBIC grows back.

        ``kind`` is what the 429 was read as (:mod:`batchgen.refusals`). One with no delay,
        judged a limiter's only by as much let through as when it was last found full (at the
        limit), never lowers that limit: overload 429s, at random, come just as often past
        it, and each cut down from one would ratchet the rate lower.
        """
        self.reader.cut(sent_at, self._last_cut())
        self.trials.cancel()
        if self._first_cut_at is None:
            self._first_cut_at = now
        self._cut_kind = kind
        current = self.rate_per_s
        # The first cut counts over the longest delay named, the shorter reading of an ambiguous
        # first refusal (see _learn_window); later cuts over the window learnt.
        span = self._span() if self.cubic is not None else max(self.window.named_s, MIN_SPAN_S)
        self._cut_from, self._cut_span, self._cut_rate = sent_at, span, current
        self._cut_delay = delay_s if delay_s is not None and delay_s < span else None
        allowed = self.allowed_rate(sent_at, span, self._cut_delay)
        w_max = self._bounded(allowed)
        kept = self.cubic if kind is Reading.AT_LIMIT else None
        self._kept = kept is not None
        if kept is not None:
            # ... and no later 429 refines it down. Counted at the limit, the count is the
            # limit: no floor at half the rate that drew it.
            w_max = min(max(allowed, kept.w_max), current or math.inf)
        # Grow back over about one limiter window: a long window reports an excess late, so a
        # rate that grows faster overshoots far. With no delay named, over the window guessed:
        # over CUBIC_K_S instead, the rate ran away between cuts (each can only halve it; bench/
        # RESULTS.md, "Pacing: the cut's growth time with no delay named").
        # And over a few times the 429's own answer time (ANSWER_K).
        k_s = self._growth_s()
        if kept is None or abs(w_max - kept.w_max) > 0.05 * kept.w_max:
            self._moved_at = now
        self.cubic = Cubic(w_max=w_max, cut_at=now, beta=BETA, k_s=k_s, probe_growth=PROBE_GROWTH)
        self._set_rate(BETA * w_max, now)
        log.debug("429: send rate cut to %.2f/s (allowed %.2f/s over %.1fs)",
                  BETA * w_max, w_max, self._cut_span)

    def _try(self, sent_at: float, now: float) -> bool:
        """A trial of a lower rate, when the limit found still draws no-delay 429s (trial.py)."""
        if self._first_cut_at is None:
            return False
        span = max(self._span(), ANSWER_K * self.answer_s)
        trial = self.trials.start(sent_at, now, span_s=span, first_cut_at=self._first_cut_at,
                                  moved_at=self._moved_at, rate=self.rate_per_s)
        if trial is None:
            return False
        log.debug("trial: %.0f%% refused; sending at %.2f/s for a while", 100 * trial.share_before,
                  TRIAL_SETTINGS.beta * trial.allowed)
        self._set_rate(TRIAL_SETTINGS.beta * trial.allowed, now)
        return True

    def _judge_trial(self, sent_at: float, now: float) -> None:
        trial = self.trials.current
        verdict = self.trials.judge(sent_at, now)
        if trial is None or verdict is None:
            return
        log.debug("trial: %s", verdict.value)
        if verdict is Verdict.OVERLOAD:
            self._set_rate(trial.rate_before, now)
            return
        # The refusals stopped below the rate let through: that rate is the limit, kept (no
        # 429 for a request sent before now refines it with the last cut's count).
        self.cubic = Cubic(w_max=trial.allowed, cut_at=now, beta=TRIAL_SETTINGS.beta,
                           k_s=self._growth_s(), probe_growth=PROBE_GROWTH)
        self._cut_kind = Reading.AT_LIMIT
        self._kept = True
        self.cut_at = self._moved_at = now

    def _growth_s(self) -> float:
        """How long the curve takes to grow back to where it was cut (see _cut)."""
        return min(max(CUBIC_K_S, self._window(), ANSWER_K * self.answer_s), MAX_CUBIC_K_S)

    def _last_cut(self) -> LastCut:
        return LastCut(self.cubic, self._cut_from, self._window(), self._cut_kind)

    def _bounded(self, allowed: float) -> float:
        current = self._cut_rate
        if current is not None:
            # Never more than the rate that drew the 429, never under half of it in one cut.
            allowed = max(min(allowed, current), current / 2)
        return max(allowed, MIN_RATE)

    def _hold(self, until: float, now: float) -> None:
        # The time named is from the refused request's arrival, a few milliseconds after its
        # send; a send at that very time may arrive before the slot is free.
        until += HOLD_MARGIN_S
        if until > self.gcra.hold_until:
            self.gcra.hold_until = until
            self.holds += 1
            log.debug("429: holding sends %.2fs", until - now)
            self._wake()

    def _refine(self, now: float) -> None:
        """More 429s for the window the last cut measured: the count it made was partial."""
        if self.cubic is None:
            return
        w_max = self._bounded(self.allowed_rate(self._cut_from, self._cut_span, self._cut_delay))
        if w_max < self.cubic.w_max:
            log.debug("429 in the last cut's window: limit refined to %.2f/s", w_max)
            self.cubic.w_max = w_max
            self._set_rate(BETA * w_max, now)
