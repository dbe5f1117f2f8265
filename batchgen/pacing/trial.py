"""A trial of a lower rate: whether 429s that name no delay are a limiter's or overload.

Sent at a limit that is too high, a limiter refuses the same share of requests all along,
just as an overloaded service does at random: with no delay named and the window only guessed,
the 429s alone cannot tell the two apart (12 per 5 s counted over a 4-s guess is kept at 3 a
second, against 2.4, and a fifth of all requests are refused for the rest of the run). A trial
asks the server instead: for a while, send below the rate it let through. A limiter then
refuses (almost) nothing, and what it let through is its limit; overload refuses as before, and
the old rate comes back. :mod:`batchgen.pacing` runs trials; like :mod:`batchgen.rates`, this
does no I/O and has no clock of its own.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .rates import Admissions


class Verdict(str, enum.Enum):
    LIMITER = "limiter"  # the refusals stopped: keep the rate let through as the limit
    OVERLOAD = "overload"  # they did not: go back to the rate before


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialSettings:
    share: float  # a trial starts when at least this share of a span was refused
    beta: float  # and sends at this share of the rate let through over it
    min_span_s: float  # the span is at least this long
    span_sends: int  # and reaches back at least this many sends
    max_span_s: float
    min_sends: int  # fewer sends in the span than this tell nothing
    drop: float  # a limiter's if the share refused falls to this share of what it was
    not_before_s: float  # no trial this soon after the first cut (the start is all refusals)
    after_limiter_s: float  # after a limiter verdict, no trial for this long
    backoff_s: float  # after an overload verdict, none for this long, doubled each time


@dataclass(frozen=True, slots=True)
class Trial:
    judge_from: float  # requests sent from here
    judge_to: float  # to here are judged, once answered
    share_before: float  # the share refused that started it
    allowed: float  # the rate let through before it, a second
    rate_before: float | None  # the pacer's rate before it (None: open)


class Trials:
    def __init__(self, admissions: Admissions, settings: TrialSettings) -> None:
        self.admissions = admissions
        self.settings = settings
        self.current: Trial | None = None
        self.started = 0
        self._next_at = -math.inf
        self._backoff_s = settings.backoff_s

    def start(
        self,
        sent_at: float,
        now: float,
        *,
        span_s: float,
        first_cut_at: float,
        moved_at: float,
        rate: float | None,
    ) -> Trial | None:
        """A trial, if a 429 for a request sent at ``sent_at`` calls for one. ``span_s``: the
        least span to judge over; ``moved_at``: when a cut last moved the limit (a span
        reaching back past it measures two rates)."""
        s = self.settings
        if self.current is not None or now < self._next_at:
            return None
        oldest = self.admissions.sent_before(sent_at, s.span_sends)
        span = max(span_s, s.min_span_s, sent_at - oldest if oldest is not None else 0.0)
        span = min(span, s.max_span_s)
        if now < first_cut_at + max(s.not_before_s, 3 * span) or sent_at - span < moved_at:
            return None
        sent, refused = self.admissions.counts(sent_at - span, sent_at)
        if sent < s.min_sends or refused < s.share * sent:
            return None
        allowed = max(sent - refused, 1) / span
        self.current = Trial(now + span / 2, now + 1.5 * span, refused / sent, allowed, rate)
        self.started += 1
        return self.current

    def judge(self, sent_at: float, now: float) -> Verdict | None:
        """The verdict once the answer to a request sent at ``sent_at`` shows every request
        the trial judges has been answered; None until then."""
        trial = self.current
        if trial is None or sent_at < trial.judge_to:
            return None
        self.current = None
        sent, refused = self.admissions.counts(trial.judge_from, trial.judge_to)
        if sent >= 5 and refused <= self.settings.drop * trial.share_before * sent:
            self._next_at = now + self.settings.after_limiter_s
            return Verdict.LIMITER
        self._next_at = now + self._backoff_s
        self._backoff_s *= 2
        return Verdict.OVERLOAD

    def cancel(self) -> None:
        """A cut came first: its own reading of the 429s stands."""
        self.current = None
