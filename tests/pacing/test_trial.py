"""Trials of a lower rate (batchgen/pacing/trial.py): a limiter's 429s or overload, when no delay
is named. Alone on made-up send times, then the pacer against the fake's own limiter on a fake
clock (tests/helpers/pacing.py's ``drive``); over HTTP they are in bench/pacing.py (a trial waits
60 s, too long for the suite)."""

from __future__ import annotations

import pytest

from batchgen.pacing.pacer import Pacing
from batchgen.pacing.rates import Admissions
from batchgen.pacing.trial import Trials, TrialSettings, Verdict
from tests.helpers.pacing import FakeClock, drive, judge

SETTINGS = TrialSettings(
    share=0.1, beta=0.8, min_span_s=4.0, span_sends=40, max_span_s=30.0, min_sends=10,
    drop=0.5, not_before_s=60.0, after_limiter_s=10.0, backoff_s=60.0,
)


def _send(a: Admissions, start: float, end: float, per_s: float, refuse_every: int) -> None:
    """Requests every 1/per_s seconds from ``start``; every ``refuse_every``-th refused (0: none)."""
    n = int((end - start) * per_s)
    for i in range(n):
        t = start + i / per_s
        a.sent(t)
        if refuse_every and i % refuse_every == 0:
            a.refused(t)


def _started(a: Admissions, now: float = 100.0) -> tuple[Trials, float]:
    trials = Trials(a, SETTINGS)
    trial = trials.start(now, now, span_s=1.0, first_cut_at=0.0, moved_at=-1.0, rate=4.0)
    assert trial is not None
    return trials, trial.judge_to


def test_a_trial_starts_only_on_a_real_share_refused_and_not_at_the_start() -> None:
    a = Admissions(horizon_s=300.0)
    _send(a, 0.0, 100.0, 4.0, refuse_every=5)  # 20% refused
    early = Trials(a, SETTINGS)
    # 30 s after the first cut: the start's own refusals are still the story.
    assert early.start(100.0, 100.0, span_s=1.0, first_cut_at=70.0, moved_at=-1.0,
                       rate=4.0) is None
    # A span reaching back past a cut that moved the limit measures two rates.
    assert early.start(100.0, 100.0, span_s=1.0, first_cut_at=0.0, moved_at=95.0,
                       rate=4.0) is None
    trial = early.start(100.0, 100.0, span_s=1.0, first_cut_at=0.0, moved_at=-1.0, rate=4.0)
    assert trial is not None
    # The span reaches back 40 sends (10 s at 4 a second), not just 4 s: 8 of 40 refused.
    assert trial.share_before == pytest.approx(0.2, abs=0.03)
    assert trial.allowed == pytest.approx(3.2, abs=0.2)
    assert trial.rate_before == 4.0
    assert early.started == 1

    calm = Admissions(horizon_s=300.0)
    _send(calm, 0.0, 100.0, 4.0, refuse_every=20)  # 5% refused: below the share
    assert Trials(calm, SETTINGS).start(100.0, 100.0, span_s=1.0, first_cut_at=0.0,
                                        moved_at=-1.0, rate=4.0) is None


def test_refusals_that_stop_below_the_rate_let_through_are_a_limiters() -> None:
    a = Admissions(horizon_s=300.0)
    _send(a, 0.0, 100.0, 4.0, refuse_every=5)
    trials, judge_to = _started(a)
    _send(a, 100.0, judge_to + 1.0, 2.5, refuse_every=0)  # at the trial's rate: none refused
    assert trials.judge(judge_to - 0.1, judge_to) is None  # not all answered yet
    assert trials.judge(judge_to + 0.5, judge_to + 0.5) is Verdict.LIMITER
    assert trials.current is None


def test_refusals_that_go_on_are_overload_and_trials_back_off() -> None:
    a = Admissions(horizon_s=600.0)
    _send(a, 0.0, 100.0, 4.0, refuse_every=5)
    trials, judge_to = _started(a)
    _send(a, 100.0, judge_to + 1.0, 2.5, refuse_every=5)  # the same share: not the rate
    assert trials.judge(judge_to + 0.5, judge_to + 0.5) is Verdict.OVERLOAD
    now = judge_to + 1.0
    _send(a, judge_to + 1.0, now + 70.0, 4.0, refuse_every=5)
    # None again for a minute, then for two.
    assert trials.start(now + 50, now + 50, span_s=1.0, first_cut_at=0.0, moved_at=-1.0,
                        rate=4.0) is None
    second = trials.start(now + 65, now + 65, span_s=1.0, first_cut_at=0.0, moved_at=-1.0,
                          rate=4.0)
    assert second is not None
    _send(a, now + 70.0, second.judge_to + 1.0, 4.0, refuse_every=5)
    assert trials.judge(second.judge_to + 0.5, second.judge_to + 0.5) is Verdict.OVERLOAD
    again = second.judge_to + 0.5
    _send(a, second.judge_to + 1.0, again + 130.0, 4.0, refuse_every=5)
    assert trials.start(again + 100, again + 100, span_s=1.0, first_cut_at=0.0, moved_at=-1.0,
                        rate=4.0) is None
    assert trials.start(again + 125, again + 125, span_s=1.0, first_cut_at=0.0, moved_at=-1.0,
                        rate=4.0) is not None


@pytest.mark.parametrize(
    ("limit", "window", "latency"), [(12, 5.0, 0.5), (40, 10.0, 0.5), (12, 5.0, 2.0)]
)
def test_a_limit_found_too_high_without_retryinfo_is_corrected_by_a_trial(
    limit: int, window: float, latency: float
) -> None:
    """Sliding windows that name no delay, five minutes. The window guessed stays shorter than
    the real one, and the limit counted over it was too high for good: at 0.5 s an answer 19%
    of requests refused at 12 per 5 s, and 0.75 of the limit reached at 40 per 10 s; at 2 s,
    14% refused at 12 per 5 s. A trial below the rate let through finds the limit."""
    clock = FakeClock()
    p = Pacing(None, clock=clock)
    timeline = drive(p, clock, limit=limit, window=window, seconds=300.0, delays=False,
                     latency=latency)
    assert p.trials.started >= 1
    # The first trial is a minute after the first cut.
    refused, reached = judge(timeline, timeline[0][0] + 100.0, clock.now, limit / window)
    assert refused <= 0.10, refused
    assert reached >= 0.9, reached


def test_under_random_overload_a_trial_gives_the_rate_back() -> None:
    """No limiter, 40% of requests refused at random, 16 in flight at 1 s an answer: trials
    start (the share refused is high) but the refusals do not stop, so the rate comes back; at
    most what 40% refused leaves (0.6 of 16 a second), less what the trials' slower spells
    cost."""
    clock = FakeClock()
    p = Pacing(None, clock=clock)
    timeline = drive(p, clock, limit=0, window=1.0, seconds=300.0, latency=1.0, concurrency=16,
                     overload=0.4)
    # None in the first minute, then one at most a minute, then two: three in five minutes.
    assert 1 <= p.trials.started <= 3
    _, reached = judge(timeline, timeline[0][0] + 100.0, clock.now, 16.0)
    assert reached >= 0.55, reached
