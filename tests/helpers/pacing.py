"""The pacer on a fake clock: ``FakeClock``, ``drive`` (endless demand against one of the fake
server's limiter classes) and ``judge`` (the timeline's figures against the issue's thresholds)."""

from __future__ import annotations

import heapq
import itertools
import random

from batchgen.fake import FakeConfig
from batchgen.fake.faults import RateWindow
from batchgen.pacing.pacer import Pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(
    p: Pacing,
    clock: FakeClock,
    *,
    limit: int,
    window: float,
    seconds: float,
    kind: str = "sliding",
    delays: bool = True,
    latency: float = 0.0,
    concurrency: int = 32,
    overload: float = 0.0,
) -> list[tuple[float, int]]:
    """The pacer alone against the fake server's own limiter, on a fake clock, with a request
    always waiting: what arrived when, and whether it was let through (200) or refused (429).
    Answers, 429s too, come back ``latency`` later, as the fake's do. ``limit`` 0 is no
    limiter; ``overload`` refuses that share of the rest at random with no delay named, as the
    fake's ``429_capacity`` fault does (seeded: the same every run)."""
    rng = random.Random(8)
    limiter = RateWindow()  # the fake server's own, as its config picks it
    cfg = FakeConfig(rate_window_s=window, rate_window_kind=kind)
    # (due, seq, sent_at, status, delay named)
    answers: list[tuple[float, int, float, int, float | None]] = []
    seq = itertools.count()
    timeline: list[tuple[float, int]] = []
    end = clock.now + seconds
    while clock.now < end:
        while answers and answers[0][0] <= clock.now:
            _, _, sent_at, status, delay = heapq.heappop(answers)
            if status == 200:
                p.on_answer(sent_at)
            else:
                p.on_rate_limited(sent_at, delay if delays else None)
        while len(answers) < concurrency and p.try_send(clock.now) == 0:
            now = clock.now
            wait = limiter.wait(now, limit, cfg) if limit else 0.0
            status, delay = (429, wait) if wait > 0 else (200, None)
            if status == 200 and limit:
                limiter.add(now, cfg)
            if status == 200 and overload and rng.random() < overload:
                status = 429  # counted by the limiter all the same, as in the fake
            timeline.append((now, status))
            heapq.heappush(answers, (now + latency, next(seq), now, status, delay))
        clock.now += 0.001
    return timeline


def judge(
    timeline: list[tuple[float, int]], start: float, end: float, per_s: float
) -> tuple[float, float]:
    """(share refused, share of ``per_s`` let through) among requests that arrived from
    ``start`` to ``end``."""
    judged = [s for t, s in timeline if t >= start]
    refused = judged.count(429)
    return refused / max(len(judged), 1), (len(judged) - refused) / (end - start) / per_s
