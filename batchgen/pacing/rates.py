"""The pacer's arithmetic, on an injected clock and with no I/O, so each part is testable alone:
:class:`Gcra` spaces requests, :class:`SendLog` and :class:`Admissions` measure what was sent and
what the limiter let through, :class:`Cubic` is the curve the rate grows back along after a cut.
:mod:`batchgen.pacing` puts them together and holds the constants that tune them.
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass


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
    """Send times, for the measured send rate: over the last ``horizon_s`` seconds, or over the
    last ``min_sends`` sends when fewer went in that time (kept for up to ``keep_s``)."""

    def __init__(
        self, horizon_s: float, *, min_span_s: float, min_sends: int = 4, keep_s: float = 300.0
    ) -> None:
        self.horizon_s = horizon_s
        self.min_span_s = min_span_s
        self.min_sends = min_sends
        self.keep_s = keep_s
        self._sent: collections.deque[float] = collections.deque()
        self._first: float | None = None

    def add(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._sent.append(now)
        _drop_through(self._sent, now - self.keep_s)

    def rate(self, now: float) -> float:
        """Requests a second over the horizon (or since the first send, if that is shorter)."""
        _drop_through(self._sent, now - self.keep_s)
        if self._first is None or not self._sent:
            return 0.0
        recent = _count(self._sent, now - self.horizon_s, now)
        if recent >= self.min_sends:
            return recent / min(self.horizon_s, max(now - self._first, self.min_span_s))
        # A slow sender, one every few seconds: a horizon of 2 s holds none of its sends as
        # often as not, and a rate of 0 would cap its growth for good (a run at 20 requests a
        # minute and 20 s an answer stayed at 8 a minute).
        n = min(len(self._sent), self.min_sends)
        return n / max(now - self._sent[-n], self.min_span_s)


class Admissions:
    """Which requests the limiter let through, by send time, over the last ``horizon_s``.

    Counted as sent minus refused: a request not (yet) refused counts as let through. When a 429
    comes back for a request sent at ``s``, the answers to those sent before ``s`` are mostly in
    (each takes about as long), and the 429s still to come for them lower the count as they
    arrive (:meth:`batchgen.pacing.Pacing.on_rate_limited` refines its cut with them).
    """

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self._sent: collections.deque[float] = collections.deque()
        self._refused: collections.deque[float] = collections.deque()
        self.first: float | None = None

    def sent(self, at: float) -> None:
        if self.first is None:
            self.first = at
        self._sent.append(at)
        for times in (self._sent, self._refused):
            _drop_through(times, at - self.horizon_s)

    def refused(self, sent_at: float) -> None:
        # 429s come back nearly in send order; a late one is put in its place.
        bisect.insort(self._refused, sent_at)

    def refused_run(self, until: float, most: int) -> int:
        """How many requests in a row, the last sent at ``until``, were refused (counted up to
        ``most``).

        A request still unanswered ends the run, as one let through does: answers come back
        nearly, not exactly, in send order, and a run is evidence only where it is known whole.
        """
        sent, refused = self._sent, self._refused
        i = bisect.bisect_right(refused, until) - 1
        k = bisect.bisect_right(sent, until) - 1
        run = 0
        while run < most and k >= 0 and i >= 0 and sent[k] == refused[i]:
            run += 1
            i -= 1
            k -= 1
        return run

    def admitted(self, after: float, until: float) -> int:
        """Requests sent in ``(after, until]`` that were not refused."""
        sent, refused = self.counts(after, until)
        return sent - refused

    def counts(self, after: float, until: float) -> tuple[int, int]:
        """(sent, refused) among requests sent in ``(after, until]``."""
        return _count(self._sent, after, until), _count(self._refused, after, until)

    def sent_before(self, until: float, n: int) -> float | None:
        """When the ``n``-th request back from ``until`` (inclusive) was sent; None if fewer."""
        i = bisect.bisect_right(self._sent, until) - n
        return self._sent[i] if n > 0 and i >= 0 else None


def _drop_through(times: collections.deque[float], cutoff: float) -> None:
    """Drop the times up to ``cutoff`` from the old end of a sorted deque."""
    while times and times[0] <= cutoff:
        times.popleft()


def _count(times: collections.deque[float], after: float, until: float) -> int:
    # Both ends by bisection: a walk would be as long as the span at a high rate, once per 429.
    return max(bisect.bisect_right(times, until) - bisect.bisect_right(times, after), 0)


@dataclass(slots=True)
class Cubic:
    """CUBIC growth after a cut to ``beta * w_max``: back to ``w_max`` in ``k_s`` seconds along
    the concave half, then beyond it along the convex half, ``probe_growth`` above it one
    ``k_s`` later."""

    w_max: float
    cut_at: float
    beta: float
    k_s: float
    probe_growth: float

    def rate(self, now: float) -> float:
        x = (now - self.cut_at) / self.k_s - 1.0
        # Back up to w_max along the concave half; past it, the convex half probes at its own
        # pace (CUBIC's C), not (1 - beta)'s: with beta near 1 that would take minutes to find
        # a limit the last cut underestimated.
        return self.w_max * (1.0 + (1.0 - self.beta if x < 0 else self.probe_growth) * x**3)
