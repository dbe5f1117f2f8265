"""The limiter's window, as far as its 429s tell (adaptive pacing, :mod:`batchgen.pacing`).

A sliding window's first refusal names about all of itself, so the window is the longest delay
the server has named; a fixed window names its boundaries, a window apart. With no delay named
it is guessed, and the guess doubles each time the
limiter stays shut all through it. Like :mod:`batchgen.rates`, no I/O and no clock of its own.
"""

from __future__ import annotations

import itertools

from .rates import Admissions

# Reopening times named within this of each other are one; a fixed window's boundaries are
# told apart from a sliding window's reopenings by all those of the last LATTICE_KEPT that were
# named twice (three at least) falling on one lattice.
LATTICE_TOLERANCE_S = 0.05
LATTICE_KEPT = 8


class WindowEstimate:
    """What the pacer knows of the limiter's window. Times are send times."""

    def __init__(self, admissions: Admissions, *, guess_s: float, max_s: float) -> None:
        self.admissions = admissions
        self.max_s = max_s
        self.learnt_s: float | None = None  # from the delays named
        self.guessed_s = guess_s  # with none named
        self.named_s = 0.0  # the longest delay named, alone
        self._doubled_for = 0  # the cut after which the guess last doubled
        # (send time, window, reopening) of a first refusal read as the longer of two windows.
        self._provisional: tuple[float, float, float] | None = None
        # distinct times named (send + delay), the last few, and how many 429s named each
        self._reopenings: list[tuple[float, int]] = []

    @property
    def seconds(self) -> float:
        return self.learnt_s if self.learnt_s is not None else self.guessed_s

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
                self.learnt_s = self.named_s
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
        window = max(window, self._boundaries(sent_at + delay_s))
        self.learnt_s = min(max(self.learnt_s or 0.0, window), self.max_s)
        self.named_s = min(max(self.named_s, delay_s), self.max_s)

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
        if step < 10 * LATTICE_TOLERANCE_S:
            return 0.0
        on_lattice = all(
            abs(g - round(g / step) * step) <= LATTICE_TOLERANCE_S * round(g / step) for g in gaps
        )
        return step if on_lattice else 0.0
