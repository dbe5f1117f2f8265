"""The limiter's window, as far as its 429s tell (adaptive pacing, :mod:`batchgen.pacing`).

A sliding window's first refusal names about all of itself, so the window is the longest delay
the server has named; a fixed window names its boundaries, a window apart. With no delay named
it is guessed, and the guess doubles each time the
limiter stays shut all through it. Like :mod:`batchgen.rates`, no I/O and no clock of its own.
"""

from __future__ import annotations

import itertools
import logging
import math

from .rates import Admissions

log = logging.getLogger(__name__)

# Reopening times named within this of each other are one; a fixed window's boundaries are
# told apart from a sliding window's reopenings by all those of the last LATTICE_KEPT that were
# named twice (three at least) falling on one lattice.
LATTICE_TOLERANCE_S = 0.05
LATTICE_KEPT = 8


class WindowEstimate:
    """What the pacer knows of the limiter's window. Times are send times."""

    def __init__(
        self,
        admissions: Admissions,
        *,
        guess_s: float,
        max_s: float,
        edge_s: float = 0.0,
        min_count: int = 2,
    ) -> None:
        """``edge_s``: how much earlier than its send a request may arrive, by the server's
        clock; ``min_count``: the least count a fixed window is paced for."""
        self.admissions = admissions
        self.max_s = max_s
        self.edge_s = edge_s
        self.min_count = min_count
        self.named_window_s: float | None = None  # from the delays named
        self.guessed_s = guess_s  # with none named
        self.named_s = 0.0  # the longest delay named, alone
        self._doubled_for = 0  # the cut after which the guess last doubled
        # (send time, window, reopening) of a first refusal read as the longer of two windows.
        self._provisional: tuple[float, float, float] | None = None
        # distinct times named (send + delay), the last few, and how many 429s named each
        self._reopenings: list[tuple[float, int]] = []
        self.boundary: float | None = None  # a fixed window's boundary, once its lattice is seen
        self.fixed_s: float | None = None  # and its length
        self._refuted = False
        # its count (what it let through before it refused), and when that window reopened
        self.per_window: int | None = None
        self._per_window_of = -math.inf

    @property
    def learnt_s(self) -> float | None:
        """The window learnt from the delays named, or a fixed window's boundaries."""
        if self.named_window_s is None:
            return None
        return max(self.named_window_s, self.fixed_s or 0.0)

    @property
    def seconds(self) -> float:
        learnt = self.learnt_s
        return learnt if learnt is not None else self.guessed_s

    def unnamed(self, sent_at: float, *, cuts: int, cut_from: float, window_over: bool) -> None:
        """A 429 with no delay, for a request sent at ``sent_at``; ``window_over``: a whole
        window (as assumed) after the request the last cut measured back from."""
        if window_over and self._doubled_for < cuts and not self.admissions.admitted(
            cut_from, sent_at
        ):
            # Nothing got through since the last cut, all through the window assumed: the
            # limiter's window is longer than that. Once a cut: the next cut measures it.
            self._doubled_for = cuts
            self.guessed_s = min(2 * self.guessed_s, self.max_s)

    def named(self, sent_at: float, delay_s: float, *, cuts: int, window_over: bool) -> None:
        """A 429 naming ``delay_s``, for a request sent at ``sent_at``."""
        if self._provisional is not None and window_over:
            burst, longer, reopened = self._provisional
            self._provisional = None
            before = burst + 0.9 * longer
            if (
                sent_at + delay_s < before
                or self.admissions.admitted(reopened, min(sent_at, before)) >= 2
            ):
                # The longer reading frees one slot (the probe's) when the limiter reopens,
                # and the start's requests leave its window only a whole window after they
                # went. More got through, or the server names an earlier time: the shorter
                # reading was right.
                self.named_window_s = self.named_s
        window = delay_s
        first = self.admissions.first
        if not cuts and first is not None and sent_at + delay_s - first <= 2.5 * delay_s:
            # The run's first refusal: the limiter frees a slot when the oldest request in its
            # window leaves it, and the oldest may be ours from the start: the first-answer
            # gate's probe goes up to a second ahead of the rest. Whether it is still in the
            # window cannot be told from one refusal (12 per 2 s with the probe in, or 12 per
            # 1 s with it just out, name the same delay), so the window learnt is the longer one
            # (a count over a whole window) and the first cut counts over the shorter one (a
            # limit overestimated costs one window of refusals; underestimated, a slow climb).
            window = sent_at + delay_s - first
            if window > delay_s * 1.1:
                self._provisional = (sent_at, window, sent_at + delay_s)
        self.named_window_s = min(max(self.named_window_s or 0.0, window), self.max_s)
        self.named_s = min(max(self.named_s, delay_s), self.max_s)
        self._boundaries(sent_at + delay_s)
        if self.fixed_s is not None:
            self._count(sent_at, sent_at + delay_s, self.fixed_s)

    def _count(self, sent_at: float, reopens: float, fixed_s: float) -> None:
        """A fixed window refuses once it has let through its limit since it began: that count
        is the limit. At each later 429 in the same window the count can only be truer (requests
        counted as let through get refused), so the least is kept."""
        count = self.admissions.admitted(reopens - fixed_s - self.edge_s, sent_at)
        if self.per_window is None or reopens < self._per_window_of + fixed_s / 2:
            self.per_window = count if self.per_window is None else min(self.per_window, count)
            self._per_window_of = max(self._per_window_of, reopens)
        elif count < self.per_window - 1:
            # A later window refused short of the count: no fixed window refuses before its
            # limit. A sliding one refused in a cycle that looked like one.
            log.debug("429 short of the fixed window's count (%d < %d): not a fixed window",
                      count, self.per_window)
            self.not_fixed()
        else:
            self.per_window, self._per_window_of = count, reopens
        if self.per_window is not None and self.per_window < self.min_count:
            # A count of 0 or 1 was read from a sliding window's refusals that fell a second
            # apart, with none let through in between (12 per 2 s at 2 s an answer): paced as a
            # fixed window, no request went again. A fixed window worth pacing lets more through.
            log.debug("a fixed window's count of %d: not a fixed window", self.per_window)
            self.not_fixed()

    def full_for(self, now: float, margin_s: float) -> float:
        """With a fixed window seen: the seconds until the next one, if this one has had as many
        sent as the limiter let through in one before it refused (0.0: not full)."""
        start = self.window_start(now)
        if start is None or self.per_window is None or self.fixed_s is None:
            return 0.0
        if self.admissions.counts(start, now)[0] < self.per_window:
            return 0.0
        return start + self.fixed_s + margin_s - now

    def not_fixed(self) -> None:
        """A fixed window seen was not one (it refused short of its count): never again."""
        self.boundary = self.fixed_s = self.per_window = None
        self._refuted = True

    def _boundaries(self, reopens: float) -> float:
        """A fixed window's length, once the times it reopens at fall on a lattice (0.0: not
        yet, or not a fixed window).

        A fixed window refuses until its next boundary, so its delays are shorter than it is,
        often much (refused late in a 60-s window, 20 s), and the longest delay named
        underestimates it: counted over 20 s, 1.5 a second got through, against a limit of 1.
        The times it names are its boundaries, a window apart, each named by every request it
        refused in that window. A sliding window's are when its oldest request leaves, one per
        refusal as the pacer probes past the limit; those can fall a probe cycle apart, on a
        lattice too, so only a time named twice counts.
        """
        times = self._reopenings
        if self._refuted:
            return 0.0
        for i, (t, n) in enumerate(times):
            if abs(reopens - t) <= LATTICE_TOLERANCE_S:
                times[i] = (t, n + 1)
                break
        else:
            times.append((reopens, 1))
            times.sort()
            del times[:-LATTICE_KEPT]
        bounds = [t for t, n in times if n >= 2]
        if len(bounds) < 3:
            return 0.0
        gaps = [b - a for a, b in itertools.pairwise(bounds)]
        step = min(gaps)
        if step < max(10 * LATTICE_TOLERANCE_S, self.named_s - LATTICE_TOLERANCE_S):
            # A fixed window never names a delay longer than itself. A sliding window paced
            # evenly names its oldest requests' exits, evenly apart, far shorter than the
            # delays it names (1.5 s apart for a 60-s window: read as a fixed window of 1.5 s,
            # it capped the rate at 0.7 of the limit).
            return 0.0
        on_lattice = all(
            abs(g - round(g / step) * step) <= LATTICE_TOLERANCE_S * round(g / step) for g in gaps
        )
        if not on_lattice:
            return 0.0
        self.boundary, self.fixed_s = bounds[-1], step
        return step

    def window_start(self, at: float) -> float | None:
        """When the fixed window that ``at`` falls in began (None: no fixed window seen)."""
        if self.boundary is None or self.fixed_s is None:
            return None
        return self.boundary + math.floor((at - self.boundary) / self.fixed_s) * self.fixed_s
