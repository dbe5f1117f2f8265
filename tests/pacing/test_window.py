"""The window estimate (batchgen/pacing/window.py): boundaries learnt from refusals."""

from __future__ import annotations

import pytest

from batchgen.pacing.rates import Admissions
from batchgen.pacing.window import WindowEstimate


def test_boundaries_are_a_lattice_no_closer_than_the_delays_named() -> None:
    # A fixed 60-s window of 40, sent one a second: each minute lets 40 through and refuses
    # the last 20, each told to wait for the boundary.
    a = Admissions(horizon_s=1000.0)
    fixed = WindowEstimate(a, guess_s=1.0, max_s=120.0)
    for t in range(1, 301):
        a.sent(float(t))
        if t % 60 == 0 or t % 60 > 40:
            a.refused(float(t))
            boundary = -(-t // 60) * 60.0
            fixed.named(float(t), boundary - t, cuts=1, window_over=True)
    assert fixed.fixed_s == pytest.approx(60.0)
    assert fixed.window_start(250.0) == pytest.approx(240.0)
    assert fixed.per_window == 40
    assert fixed.full_for(305.0, 0.05) == 0.0  # nothing sent in this minute yet
    for t in range(301, 341):
        a.sent(float(t))
    assert fixed.full_for(340.5, 0.05) == pytest.approx(19.55)  # 40 sent: full till 360
    # A later window that refuses short of that count was no fixed window: forgotten for good.
    a.refused(340.0)
    fixed.named(330.0, 30.0, cuts=1, window_over=True)
    assert fixed.fixed_s is None and fixed.full_for(340.5, 0.05) == 0.0
    # A sliding 60-s window paced evenly: its oldest requests leave 1.5 s apart, and each exit
    # is named by two refusals, 50 s ahead. On a lattice too, but closer than the delays named.
    sliding = WindowEstimate(a, guess_s=1.0, max_s=120.0)
    for i in range(8):
        for _ in range(2):
            sliding.named(100.0 + 1.5 * i - 50.0, 50.0, cuts=1, window_over=True)
    assert sliding.fixed_s is None
    assert sliding.learnt_s == pytest.approx(50.0)
