"""Pacing against the fake's quota limiter: how much of the limit batchgen reaches, and what
share of its requests the limiter refuses.

    .venv/bin/python bench/pacing.py                       # the whole table, ~3-4 minutes
    .venv/bin/python bench/pacing.py --case adaptive:12:1:0.05 --case rpm:12:2:0.05

A case is ``mode:limit:window:latency[:kind[:style]]``: ``mode`` ``rpm`` runs ``batchgen run
--rpm`` set exactly at the limit (limit x 60 / window requests a minute, paced over the default
60-s window, so the client knows nothing of the limiter's window); ``adaptive`` gives no limit.
``kind`` is ``sliding`` (default) or ``fixed``; ``style`` ``quota`` (429 with RetryInfo, default)
or ``capacity`` (429 with no delay at all), or ``overloadP``: no limiter at all, but a share ``P``
of requests refused at random with a capacity 429 (the fake's ``429_capacity`` fault), as when the
service is overloaded. There ``limit`` per ``window`` should be what the concurrency allows
(concurrency / latency): the figure is the share of it reached, at best ``1 - P``.

Figures come from the server's timeline of arrivals. ``rpm`` is judged over the whole run;
``adaptive`` after the first window (the first window is where it learns the limit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
KEY = "fake-key"

# Targets (issue 8).
RPM_MIN_REACHED, RPM_MAX_REFUSED = 0.95, 0.01
ADAPTIVE_MIN_REACHED, ADAPTIVE_MAX_REFUSED = 0.90, 0.10
# With random overload 429s and no limiter: at least this share of what the concurrency allows,
# times the share not refused.
OVERLOAD_MIN_REACHED = 0.85


class ServerLike(Protocol):
    url: str

    def _post(self, path: str, body: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Case:
    mode: str  # "rpm" | "adaptive"
    limit: int
    window_s: float
    latency_s: float
    kind: str = "sliding"
    style: str = "quota"
    concurrency: int = 32
    seconds: float = 20.0  # how long the run should last at the limit, roughly
    burst: int | None = None

    @property
    def overload(self) -> float:
        """The share refused at random, for an ``overloadP`` style (no limiter then)."""
        return float(self.style[len("overload"):]) if self.style.startswith("overload") else 0.0

    @property
    def limited(self) -> bool:
        return not self.style.startswith("overload")

    @property
    def judged_share(self) -> float:
        """With random 429s, the run is judged until 90% of it is done (see figures)."""
        return 1.0 if self.limited else 0.9

    @classmethod
    def parse(cls, text: str) -> Case:
        parts = text.split(":")
        mode, limit, window, latency = parts[:4]
        extra = dict(zip(("kind", "style"), parts[4:], strict=False))
        return cls(mode, int(limit), float(window), float(latency), **extra)

    @property
    def jobs(self) -> int:
        windows = max(self.seconds / self.window_s, 2.0 if self.mode == "adaptive" else 1.0)
        if self.mode == "adaptive":
            windows += 1  # the first window is not judged
        return max(int(self.limit * windows), 24)

    @property
    def label(self) -> str:
        if not self.limited:
            return (f"{self.mode} no limiter, {self.overload:.0%} overload 429s, "
                    f"{self.concurrency} at {self.latency_s}s")
        style = "" if self.style == "quota" else ", no RetryInfo"
        return f"{self.mode} {self.limit}/{self.window_s:g}s {self.kind}{style}, {self.latency_s}s"


@dataclass
class Outcome:
    case: Case
    requests: int
    refused: int
    judged: int
    judged_refused: int
    reached: float
    elapsed_s: float
    code: int

    @property
    def refused_share(self) -> float:
        return self.judged_refused / self.judged if self.judged else 0.0

    @property
    def ok(self) -> bool:
        if self.case.mode == "rpm":
            return self.reached >= RPM_MIN_REACHED and self.refused_share <= RPM_MAX_REFUSED
        if not self.case.limited:
            # Random refusals cannot be avoided by pacing; slowing down for them is the miss.
            return self.reached >= OVERLOAD_MIN_REACHED * (1 - self.case.overload)
        return self.reached >= ADAPTIVE_MIN_REACHED and self.refused_share <= ADAPTIVE_MAX_REFUSED


def figures(
    timeline: list[tuple[float, int]],
    limit: int,
    window_s: float,
    *,
    skip_first_window: bool,
    latency_s: float = 0.0,
    until_share: float = 1.0,
) -> tuple[float, int, int]:
    """(share of the limit reached, requests judged, of which refused) from a server timeline.

    The limit is ``limit`` requests per ``window_s``. Judged: every arrival, or those after the
    first window. That window starts when the first-answer gate lets the workers go (the second
    arrival: the probe goes alone), and the client hears how it went one latency later, so it
    ends ``window_s + latency_s`` after that. Reached: admitted requests a second over the
    judged span, over the limit's. ``until_share`` ends the span where that share of all
    admissions is in.
    """
    if len(timeline) < 2:
        return 0.0, len(timeline), 0
    # The probe goes alone (the first-answer gate, at most 1 s, measured on its own in the
    # long-latency scenario): the rate counts from the second arrival.
    start = timeline[1][0] + window_s + latency_s if skip_first_window else timeline[1][0]
    if until_share < 1.0:
        # Up to the time this share of all admissions is in: the rest is the tail of retries,
        # whose backoff, not the pacing, sets how long the last job takes.
        times = [t for t, s in timeline if s != 429]
        if times:
            end = times[min(int(until_share * len(times)), len(times) - 1)]
            timeline = [(t, s) for t, s in timeline if t <= end]
    judged = [(t, s) for t, s in timeline if t >= start]
    admitted = [t for t, s in judged if s != 429]
    if not skip_first_window:
        admitted = [t for t in admitted if t >= timeline[1][0]]
    refused = sum(1 for _, s in judged if s == 429)
    if len(admitted) < 2:
        return 0.0, len(judged), refused
    if skip_first_window:
        rate = len(admitted) / max(admitted[-1] - start, 1e-9)
    else:
        rate = (len(admitted) - 1) / max(admitted[-1] - admitted[0], 1e-9)
    return rate / (limit / window_s), len(judged), refused


def write_manifest(path: Path, jobs: int) -> Path:
    with path.open("w") as fh:
        for i in range(jobs):
            fh.write(json.dumps({"prompt": f"pacing {i}: a small red cube"}) + "\n")
    return path


def run_case(server: ServerLike, case: Case, work: Path) -> Outcome:
    server._post(
        "/_fake/config",
        {
            "latency_s": case.latency_s,
            "rpm_limit": case.limit if case.limited else None,
            "rate_window_s": case.window_s,
            "rate_window_kind": case.kind,
            "rate_limit_style": case.style if case.limited else "quota",
            "faults": {} if case.limited else {"429_capacity": case.overload},
            "image_bytes": None,
            "full_size": False,
        },
    )
    server._post("/_fake/reset", {})
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{case.mode}-{case.limit}-{case.window_s:g}-{case.latency_s:g}-{time.monotonic_ns()}"
    manifest = write_manifest(work / f"{tag}.jsonl", case.jobs)
    cmd = [
        PY, "-m", "batchgen", "run", str(manifest), "--out", str(work / tag),
        "--base-url", server.url, "--no-progress", "--yes", "--no-gallery",
        "--concurrency", str(case.concurrency), "--max-attempts", "100", "--backoff", "0.5",
    ]  # fmt: skip
    if case.mode == "rpm":
        cmd += ["--rpm", f"{case.limit * 60 / case.window_s:g}"]
    if case.burst is not None:
        cmd += ["--burst", str(case.burst)]
    env = {**os.environ, "BATCHGEN_API_KEY": KEY}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    elapsed = time.monotonic() - t0
    with urllib.request.urlopen(server.url + "/_fake/timeline", timeout=30) as resp:
        timeline = [(float(t), int(s)) for t, s in json.loads(resp.read())["timeline"]]
    server._post("/_fake/config", {"rpm_limit": None, "latency_s": 0.0})
    reached, judged, judged_refused = figures(
        timeline,
        case.limit,
        case.window_s,
        skip_first_window=case.mode == "adaptive",
        latency_s=case.latency_s,
        until_share=case.judged_share,
    )
    refused = sum(1 for _, s in timeline if s == 429)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
    return Outcome(case, len(timeline), refused, judged, judged_refused, reached, elapsed,
                   proc.returncode)


# The table: limit, window, latency, mode. Limits are per window; windows of 10 and 60 s use
# limits that keep each run under a minute or two.
TABLE: tuple[Case, ...] = (
    Case("rpm", 12, 1, 0.05),
    Case("rpm", 12, 2, 0.05),
    Case("rpm", 12, 2, 0.05, kind="fixed"),
    Case("rpm", 40, 10, 0.05, seconds=20),
    Case("rpm", 120, 60, 0.05, seconds=60),
    Case("rpm", 12, 2, 1.0),
    Case("adaptive", 12, 1, 0.05),
    Case("adaptive", 12, 1, 1.0),
    Case("adaptive", 12, 2, 0.05),
    Case("adaptive", 12, 2, 0.05, kind="fixed"),
    Case("adaptive", 12, 2, 0.05, style="capacity"),
    Case("adaptive", 12, 2, 1.0),
    Case("adaptive", 40, 10, 0.05, seconds=30),
    Case("adaptive", 120, 60, 0.05, seconds=120),
    # No limiter: overload 429s at random; 16 in flight at 1 s allow 16 a second.
    Case("adaptive", 16, 1, 1.0, style="overload0.05", concurrency=16),
    Case("adaptive", 16, 1, 1.0, style="overload0.2", concurrency=16),
)


def row(o: Outcome) -> str:
    c = o.case
    verdict = "PASS" if o.ok else "MISS"
    judged = "whole run" if c.mode == "rpm" else "after the first window"
    if c.limited:
        limiter = f"{c.limit} per {c.window_s:g} s {c.kind}"
        limiter += " (no RetryInfo)" if c.style == "capacity" else ""
    else:
        limiter = (f"none: {c.overload:.0%} overload 429s; {c.concurrency} in flight allow "
                   f"{c.limit} per {c.window_s:g} s")
    return (
        f"| {c.mode} | {limiter} | {c.latency_s:g} s | "
        f"{o.reached:.2f} | {o.refused_share:.1%} ({o.judged_refused}/{o.judged}, {judged}) | "
        f"{o.requests} requests, {o.refused} refused in all, {o.elapsed_s:.0f} s | {verdict} |"
    )


TABLE_HEAD = (
    "| mode | limiter | latency | share of the limit reached | refused | run | verdict |\n"
    "|---|---|---|---|---|---|---|"
)


def main() -> int:
    from run import WORK, Server  # bench/run.py: the fake server in its own process

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", default=[],
                    help="mode:limit:window:latency[:kind[:style]]")
    ap.add_argument("--burst", type=int)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--seconds", type=float, help="how long each run lasts at the limit")
    args = ap.parse_args()
    cases = [Case.parse(c) for c in args.case] or list(TABLE)
    if args.burst is not None or args.concurrency is not None or args.seconds:
        from dataclasses import replace

        cases = [
            replace(c, burst=args.burst, concurrency=args.concurrency or c.concurrency,
                    seconds=args.seconds or c.seconds)
            for c in cases
        ]
    WORK.mkdir(parents=True, exist_ok=True)
    server = Server()
    try:
        print(TABLE_HEAD)
        for case in cases:
            print(row(run_case(server, case, WORK / "pacing")), flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
