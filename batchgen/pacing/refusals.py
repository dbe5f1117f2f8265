"""What a 429 with no delay named says: a full limiter, or an overloaded service.

Overload 429s come at random, at the same share whatever the rate; read as a full limiter, each
would cut the rate again until it collapsed (at 20% of requests refused, a run took 8 times as
long). A limiter refuses for the rate, in one of two ways: shut for the rest of its window, it
refuses every request in a row, a longer run than chance makes at the share refused; or, just
past its limit, it refuses with as many let through over its window as when it was last found
full, and refuses more than it did while the rate was under that limit. :mod:`batchgen.pacing`
cuts the rate only on those readings; like :mod:`batchgen.rates`, this does no I/O.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .rates import Admissions, Cubic


class Reading(str, enum.Enum):
    """What a 429 was read as."""

    OVERLOAD = "overload"  # as far as can be told: the attempt backs off, the rate stays
    NAMED = "named"  # it named a delay: a limiter's
    SHUT = "shut"  # a run of refusals, or nothing let through since the last cut
    AT_LIMIT = "at the limit"  # as many let through as when the limiter was last found full


@dataclass(frozen=True, slots=True, kw_only=True)
class ReaderSettings:
    run_chance: float  # a run is a limiter's when chance makes it less often than this
    max_run: int  # ... and one this long always is
    full_share: float  # "at the limit": at least this share of the limit found let through
    noise_factor: float  # ... and over this many times the share refused under the limit
    min_quiet_sends: int  # a time under the limit counts with this many requests sent in it
    quiet_kept: int  # the times under the limit remembered


@dataclass(frozen=True, slots=True)
class LastCut:
    """What the last cut measured from, for reading the 429s after it."""

    cubic: Cubic | None  # None: no cut yet
    sent_at: float  # the refused request it measured back from
    window_s: float  # the limiter's window as then known
    reading: Reading


class RefusalReader:
    def __init__(self, admissions: Admissions, settings: ReaderSettings) -> None:
        self.admissions = admissions
        self.settings = settings
        # (sent, refused) while the rate was under the limit found, after the last few cuts
        self._quiet: tuple[tuple[int, int], ...] = ()

    def read(self, sent_at: float, span_s: float, last: LastCut) -> Reading:
        """A 429 with no delay named, for a request sent at ``sent_at``; ``span_s`` is the
        limiter's window as far as it is known."""
        s = self.settings
        sent, refused = self.admissions.counts(sent_at - span_s, sent_at)
        share = refused / max(sent, 1)
        # The shortest run that chance alone makes less often than run_chance at this share:
        # this refusal and the n - 1 before it.
        chance = math.log(s.run_chance) / math.log(min(max(share, 1e-9), 0.99))
        if self.admissions.refused_run(sent_at, s.max_run) >= min(1 + math.ceil(chance), s.max_run):
            return Reading.SHUT
        cubic = last.cubic
        if cubic is None:
            return Reading.OVERLOAD
        if not self.admissions.admitted(last.sent_at, sent_at):
            return Reading.SHUT  # nothing let through since the last cut
        if (
            sent - refused >= s.full_share * cubic.w_max * span_s
            and share > s.noise_factor * self.background_share(sent_at, last)
        ):
            return Reading.AT_LIMIT
        return Reading.OVERLOAD

    def background_share(self, until: float, last: LastCut) -> float:
        """The share refused while the rate was under the limit last found: after a cut, for
        one growth time. A limiter refuses none of those; overload 429s come there as often as
        anywhere. Only after a cut "at the limit" is that time clean of a limiter's refusals:
        after one for a limiter seen shut, its window may still hold what drew the cut."""
        now = (self._quiet_counts(until, last),) if last.reading is Reading.AT_LIMIT else ()
        shares = [r / n for n, r in (*self._quiet, *now) if n >= self.settings.min_quiet_sends]
        # The lowest: a limiter's window that still held what drew a cut refuses some of the
        # requests after it; overload 429s come in every such time.
        return min(shares, default=0.0)

    def cut(self, sent_at: float, last: LastCut) -> None:
        """A new cut, at a 429 for a request sent at ``sent_at``: the last one's time under the
        limit ends."""
        if last.reading is Reading.AT_LIMIT:
            kept = self.settings.quiet_kept
            self._quiet = (*self._quiet[-(kept - 1):], self._quiet_counts(sent_at, last))

    def _quiet_counts(self, until: float, last: LastCut) -> tuple[int, int]:
        """(sent, refused) since the last cut while the rate was under the limit, from when
        the limiter's window has let go of what drew the cut."""
        cubic = last.cubic
        if cubic is None:
            return 0, 0
        start = max(cubic.cut_at, last.sent_at + last.window_s)
        return self.admissions.counts(start, min(cubic.cut_at + cubic.k_s, until))
