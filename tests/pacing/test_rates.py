"""The rate keepers (batchgen/pacing/rates.py): GCRA spacing, admissions counted, sends measured."""

from __future__ import annotations

import pytest

from batchgen.pacing.rates import Admissions, Gcra, SendLog


def test_gcra_spaces_requests_evenly_and_starts_without_a_burst() -> None:
    g = Gcra(0.5, burst=3, now=0.0)
    sent = []
    now = 0.0
    for _ in range(6):
        now += g.delay(now)
        g.take(now)
        sent.append(now)
    # No credit at the start: one every 0.5 s from the first, not three at once.
    assert sent == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_gcra_burst_is_earned_by_idle_time_only() -> None:
    g = Gcra(1.0, burst=3, now=0.0)
    g.take(0.0)
    # After 10 s idle, three may leave at once, then one a second again.
    now = 10.0
    leaves = []
    for _ in range(5):
        now += g.delay(now)
        g.take(now)
        leaves.append(now)
    assert leaves == pytest.approx([10.0, 10.0, 10.0, 11.0, 12.0])


def test_admissions_count_what_was_sent_and_not_refused() -> None:
    a = Admissions(horizon_s=120.0)
    for t in (1.0, 1.1, 1.2, 1.3, 2.5):
        a.sent(t)
    a.refused(1.3)
    a.refused(1.1)  # 429s may come back out of order
    assert a.admitted(1.0, 1.3) == 1  # (1.0, 1.3]: 1.1 and 1.3 refused, 1.2 let through
    assert a.admitted(0.0, 3.0) == 3
    assert a.admitted(1.3, 2.0) == 0


def test_a_slow_senders_rate_is_measured_over_its_last_sends() -> None:
    log = SendLog(2.0, min_span_s=1.0)
    for i in range(10):  # one every 7 s: a 2-s horizon holds none of them most of the time
        log.add(i * 7.0)
    # 5 s after the last send: the last four went over 26 s.
    assert log.rate(63.0 + 5.0) == pytest.approx(4 / 26.0)
    fast = SendLog(2.0, min_span_s=1.0)
    for i in range(100):
        fast.add(i * 0.1)
    assert fast.rate(9.9) == pytest.approx(20 / 2.0)  # 10 a second, over the horizon


def test_a_run_of_refusals_is_counted_only_where_it_is_known_whole() -> None:
    a = Admissions(horizon_s=120.0)
    for t in (1.0, 1.1, 1.2, 1.3, 1.4):
        a.sent(t)
    for t in (1.4, 1.1, 1.2):  # 1.3 let through, or not answered yet
        a.refused(t)
    assert a.refused_run(1.4, 8) == 1
    assert a.refused_run(1.2, 8) == 2
    a.refused(1.3)
    assert a.refused_run(1.4, 8) == 4
    assert a.refused_run(1.4, 3) == 3
