"""Reading 429s that name no delay (batchgen/pacing/refusals.py) from the refusals around them."""

from __future__ import annotations

import math

import pytest

from batchgen.pacing.rates import Admissions, Cubic
from batchgen.pacing.refusals import LastCut, ReaderSettings, Reading, RefusalReader


def _reader(a: Admissions) -> RefusalReader:
    return RefusalReader(a, ReaderSettings(run_chance=0.001, max_run=8, full_share=0.9,
                                           noise_factor=2.0, min_quiet_sends=10, quiet_kept=3))


def test_a_429_with_no_delay_is_read_from_the_refusals_around_it() -> None:
    a = Admissions(horizon_s=120.0)
    reader = _reader(a)
    none = LastCut(None, -math.inf, 1.0, Reading.OVERLOAD)
    # 20 sent in 1 s, every 5th refused: scattered, as overload 429s are.
    for i in range(20):
        a.sent(i * 0.05)
        if i % 5 == 4:
            a.refused(i * 0.05)
    assert reader.read(0.95, 1.0, none) is Reading.OVERLOAD
    # Then 8 in a row refused: at that share, chance makes such a run under 0.1% of the time.
    for i in range(20, 28):
        a.sent(i * 0.05)
        a.refused(i * 0.05)
    assert reader.read(27 * 0.05, 1.0, none) is Reading.SHUT


def test_a_429_at_the_limit_found_is_a_limiters_unless_refusals_were_as_common_under_it() -> None:
    a = Admissions(horizon_s=120.0)
    reader = _reader(a)
    # A cut at t=0 found 10 a second; the rate grew back under it for 2 s (t 1-3).
    cubic = Cubic(w_max=10.0, cut_at=0.0, beta=0.95, k_s=2.0, probe_growth=0.1)
    last = LastCut(cubic, -1.0, 1.0, Reading.AT_LIMIT)
    for i in range(40):  # 1.0 .. 4.9 s, 10 a second; the last one refused
        a.sent(1.0 + i * 0.1)
    a.refused(4.9)
    # Nothing refused under the limit: one 429 with 9 let through over the window is the limit.
    assert reader.read(4.9, 1.0, last) is Reading.AT_LIMIT
    # The same with one in five refused under the limit too: overload, at the limit or not.
    a2 = Admissions(horizon_s=120.0)
    reader2 = _reader(a2)
    for i in range(40):
        a2.sent(1.0 + i * 0.1)
        if i % 5 == 2 or i == 39:
            a2.refused(1.0 + i * 0.1)
    assert reader2.background_share(4.9, last) == pytest.approx(0.2, abs=0.03)
    assert reader2.read(4.9, 1.0, last) is Reading.OVERLOAD
