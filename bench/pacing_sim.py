"""The pacer against the fake's limiter in simulated time: the whole pacing table in seconds.

    .venv/bin/python bench/pacing_sim.py                 # every case, 5 seeds each
    .venv/bin/python bench/pacing_sim.py --seeds 20 --case adaptive:12:2:0.05:fixed

The real :class:`batchgen.pacing.Pacing` and the fake server's own limiter classes run on a
virtual clock; the workers, the concurrency cap, the first-answer gate, the network and the
retry waits are modelled after pool.py and the fake (arrivals 1-4 ms after the send, every
answer, 429s too, after the configured latency, each wake-up up to 3 ms late).
``bench/pacing.py`` runs the same table over HTTP through the CLI, and its figures are the ones
that count; this exists so that a change to the pacer can be judged on many seeds, and many
windows, in a minute.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from pacing import OVERLOAD_MIN_REACHED, TABLE, Case, figures  # bench/pacing.py

from batchgen.fake.faults import FakeConfig, RateWindow
from batchgen.pacing.gate import RELEASE_AFTER_S
from batchgen.pacing.pacer import Pacing

WIDE: tuple[Case, ...] = tuple(
    Case("adaptive", limit, window, latency, kind=kind, style=style, seconds=max(20, 6 * window))
    for limit, window in ((3, 1), (12, 1), (40, 1), (12, 2), (12, 5), (40, 10), (30, 30))
    for latency in (0.05, 0.5, 2.0)
    for kind, style in (("sliding", "quota"), ("fixed", "quota"), ("sliding", "capacity"))
) + tuple(
    Case("adaptive", 16, latency, latency, style=f"overload{p}", concurrency=16, seconds=20)
    for latency in (0.05, 1.0)
    for p in (0.05, 0.2, 0.4)
)
# Per-minute quotas at the service's own pace (10-30 s an answer), over simulated minutes.
MINUTE: tuple[Case, ...] = tuple(
    Case("adaptive", limit, 60, latency, kind=kind, concurrency=concurrency, seconds=600)
    for kind in ("sliding", "fixed")
    for limit, latency, concurrency in (
        (20, 20.0, 8), (60, 20.0, 32), (10, 30.0, 16), (60, 10.0, 32)
    )
)
BACKOFF_S = 0.5  # bench/pacing.py runs the CLI with --backoff 0.5
LATE_S = 0.003  # wake-ups are up to this late
NET_S = 0.004  # arrivals are 1 ms to this after the send


@dataclass
class Sim:
    case: Case
    rng: random.Random
    now: float = 0.0
    events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn))

    def run(self, until: float) -> None:
        while self.events and self.now < until:
            t, _, fn = heapq.heappop(self.events)
            self.now = max(self.now, t)
            fn()


def simulate(
    case: Case, seed: int, timeline_out: list[tuple[float, int]] | None = None
) -> tuple[float, int, int, int]:
    """(reached, judged, refused among them, requests in all) for one simulated run."""
    rng = random.Random(seed)
    sim = Sim(case, rng)
    # A random phase against the fixed window's boundaries (the fake uses the monotonic clock).
    sim.now = 1000.0 + rng.uniform(0, case.window_s)
    rpm = case.limit * 60 / case.window_s if case.mode == "rpm" else None
    pacer = Pacing(None if rpm is None else rpm / 60, burst=case.burst or 1,
                   clock=lambda: sim.now)
    limiter = RateWindow()  # the fake server's own, as its config picks it
    cfg = FakeConfig(rate_window_s=case.window_s, rate_window_kind=case.kind)
    pending = list(range(case.jobs))
    slots = case.concurrency
    waiting: list[Callable[[float], None]] = []  # FIFO of sends waiting for the pacer
    pump_at: list[float] = [float("inf")]
    gate = {"open": False, "probe": False}
    state = {"done": 0, "attempts": {}}

    def arrive(job: int, sent_at: float) -> None:
        now = sim.now
        wait = limiter.wait(now, case.limit, cfg) if case.limited else 0.0
        if wait <= 0 and case.overload and rng.random() < case.overload:
            wait = 1.0  # an overload 429: no limiter, no delay named (style below)
        if wait > 0:
            sim.timeline.append((now, 429))
            delay = wait if case.style == "quota" else None
            # The fake answers errors after its latency too (fake/app.py, _generate).
            sim.at(now + case.latency_s * rng.uniform(0.97, 1.03),
                   lambda: refused(job, sent_at, delay))
            return
        limiter.add(now, cfg)
        sim.timeline.append((now, 200))
        lat = case.latency_s * rng.uniform(0.97, 1.03)
        sim.at(now + lat, lambda: answered(job, sent_at))

    def answered(job: int, sent_at: float) -> None:
        nonlocal slots
        slots += 1
        pacer.on_answer(sent_at)
        state["done"] += 1
        if not gate["open"]:
            gate["open"] = True
            start_more()
        start_more()
        pump()

    def refused(job: int, sent_at: float, delay: float | None) -> None:
        nonlocal slots
        slots += 1
        pacer.on_rate_limited(sent_at, delay)
        attempts = state["attempts"]
        attempts[job] = attempts.get(job, 0) + 1
        if delay is not None:
            wait = delay + rng.uniform(0, min(0.1 * delay, 1.0))
        else:
            wait = min(60.0, BACKOFF_S * 2.0 ** (attempts[job] - 1)) + rng.uniform(0, BACKOFF_S)
        sim.at(sim.now + wait, lambda: retry(job))
        if gate["probe"] and not gate["open"]:
            gate["probe"] = False  # the probe's 429 is an answer: the gate opens
            gate["open"] = True
        start_more()
        pump()

    def retry(job: int) -> None:
        pending.insert(0, job)
        start_more()

    def start_more() -> None:
        nonlocal slots
        while pending and slots > 0:
            if not gate["open"]:
                if gate["probe"]:
                    return
                gate["probe"] = True
                probe_start = sim.now

                def release() -> None:
                    if not gate["open"]:
                        gate["open"] = True
                        start_more()

                sim.at(probe_start + RELEASE_AFTER_S, release)
                pending_job = pending.pop(0)
                slots -= 1
                queue_send(pending_job)
                return
            job = pending.pop(0)
            slots -= 1
            queue_send(job)

    def queue_send(job: int) -> None:
        def send(t: float) -> None:
            sim.at(t + rng.uniform(0.001, NET_S), lambda: arrive(job, t))

        waiting.append(send)
        pump()

    def pump() -> None:
        while waiting:
            wait = pacer.try_send(sim.now)
            if wait > 0:
                due = sim.now + wait + rng.uniform(0, LATE_S)
                if due < pump_at[0] - 1e-9 or pump_at[0] <= sim.now:
                    pump_at[0] = due
                    sim.at(due, pump)
                return
            waiting.pop(0)(sim.now)

    start_more()
    # A re-pump now and then stands in for the real waiters' 0.25-s poll and rate-change wake.
    def tick() -> None:
        pump()
        if state["done"] < case.jobs:
            sim.at(sim.now + 0.25, tick)

    sim.at(sim.now, tick)
    sim.run(until=sim.now + 3600)
    timeline = sorted(sim.timeline)
    if timeline_out is not None:
        timeline_out.extend(timeline)
    reached, judged, refused_n = figures(
        timeline, case.limit, case.window_s,
        skip_first_window=case.mode == "adaptive", latency_s=case.latency_s,
        until_share=case.judged_share,
    )
    return reached, judged, refused_n, len(timeline)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", default=[])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--loaded", action="store_true",
                    help="a busy machine: wake-ups up to 30 ms late, arrivals up to 20 ms")
    ap.add_argument("--wide", action="store_true",
                    help="adaptive mode over more limits, windows, latencies and kinds")
    ap.add_argument("--minute", action="store_true",
                    help="adaptive mode against per-minute quotas at 10-30 s an answer")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a constant of batchgen.pacing, to try a tuning")
    args = ap.parse_args()
    import batchgen.pacing.pacer as pacing_module

    if args.loaded:
        global LATE_S, NET_S
        LATE_S, NET_S = 0.03, 0.02

    for item in args.set:
        name, value = item.split("=", 1)
        setattr(pacing_module, name, float(value))
    cases = [Case.parse(c) for c in args.case] or list(
        WIDE if args.wide else MINUTE if args.minute else TABLE
    )
    if args.seconds:
        from dataclasses import replace

        cases = [replace(c, seconds=args.seconds) for c in cases]
    print("| case | reached (min / median) | refused (max / median) | misses |")
    print("|---|---|---|---|")
    for case in cases:
        runs = [simulate(case, seed) for seed in range(args.seeds)]
        reached = [r[0] for r in runs]
        shares = [r[2] / r[1] if r[1] else 0.0 for r in runs]
        lo_r, lo_s = (0.95, 0.01) if case.mode == "rpm" else (0.90, 0.10)
        if not case.limited:
            lo_r, lo_s = OVERLOAD_MIN_REACHED * (1 - case.overload), 1.0
        # What the concurrency allows is the most any pacing can reach.
        lo_r *= min(1.0, case.concurrency / case.latency_s / (case.limit / case.window_s))
        misses = sum(1 for r, s in zip(reached, shares, strict=True) if r < lo_r or s > lo_s)
        print(f"| {case.label} | {min(reached):.2f} / {statistics.median(reached):.2f} | "
              f"{max(shares):.1%} / {statistics.median(shares):.1%} | {misses}/{len(runs)} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
