"""``batchgen report``: latencies, throughput over time and errors of a run folder, under its
status (:mod:`batchgen.status`).

Reads ``DIR/run.json`` and ``DIR/ledger.jsonl`` alone: no manifest, no key.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..folder.current import current_ids
from ..folder.intents import read_unsettled
from ..folder.ledger import LEDGER_NAME, LedgerRecord, iter_ledger
from ..folder.reviews import Verdict
from ..folder.runfolder import read_meta
from ..words import plural
from .status import Status, add_review, format_status, set_unsettled, status_from_latest

THROUGHPUT_BUCKETS = 10
REJECTED_SHOWN = 10  # rejected images listed with their notes; the rest counted
MIN_SPAN_S = 1.0
# A stretch this long with no job in flight is time between runs, not work: throughput leaves
# it out. Within a run a worker goes straight from one job to the next (a job's time includes
# its retries' waits), so its gaps are milliseconds.
IDLE_GAP_S = 10.0
SPARK = "▁▂▃▄▅▆▇█"


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank: always a latency that was actually observed."""
    if not sorted_values:
        return 0.0
    rank = max(math.ceil(p / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def parse_time(value: str) -> float | None:
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


@dataclass(frozen=True, slots=True)
class ErrorKindSummary:
    count: int
    retryable: bool
    example: str
    example_job: str


@dataclass(frozen=True, slots=True)
class Bucket:
    start_s: float  # from the first finished image
    images: int
    per_min: float | None


@dataclass(frozen=True, slots=True)
class Report:
    status: Status
    errors: dict[str, ErrorKindSummary]
    latency: dict[str, float]
    attempts: dict[int, int]  # requests a job took over every run -> jobs
    requests: int
    by_size: dict[str, int]  # succeeded images
    span_s: float
    bucket_s: float
    buckets: tuple[Bucket, ...]
    meta: dict[str, Any]
    # The current images rejected in review: (job id, note), by job id.
    rejected: tuple[tuple[str, str], ...] = ()
    idle_s: float = 0.0  # time between runs, left out of span_s and the buckets
    runs: int = 1  # stretches of work the ledger shows, apart by more than IDLE_GAP_S

    @property
    def per_image_usd(self) -> float | None:
        return self.status.cost_usd / self.status.succeeded if self.status.succeeded else None

    @property
    def mean_attempts(self) -> float:
        jobs = sum(self.attempts.values())
        return self.requests / jobs if jobs else 0.0

    @property
    def images_per_min(self) -> float | None:
        if self.span_s < MIN_SPAN_S:
            return None
        return sum(b.images for b in self.buckets) / self.span_s * 60

    def to_json(self) -> dict[str, Any]:
        st = self.status
        per_image = self.per_image_usd
        per_min = self.images_per_min
        return {
            **st.to_json(),
            "run_dir": str(st.run_dir),
            "state": st.state,
            "errors": {
                kind: {
                    "count": e.count,
                    "retryable": e.retryable,
                    "example": e.example,
                    "example_job": e.example_job,
                }
                for kind, e in sorted(self.errors.items())
            },
            "latency_s": {k: round(v, 3) for k, v in self.latency.items()},
            "attempts": {
                "histogram": {str(k): v for k, v in sorted(self.attempts.items())},
                "mean": round(self.mean_attempts, 3),
                "requests": self.requests,
            },
            "spend": {
                "total_usd": round(st.cost_usd, 4),
                "unsettled_usd": round(st.unsettled_usd, 4),
                "unsettled_requests": st.unsettled_requests,
                "lost_usd": round(st.lost_usd, 4),
                "lost_requests": st.lost_requests,
                "per_image_usd": None if per_image is None else round(per_image, 4),
            },
            "by_size": dict(sorted(self.by_size.items())),
            **({"rejected": [{"job_id": k, "note": n} for k, n in self.rejected]}
               if self.rejected else {}),
            "throughput": {
                "images_per_min": None if per_min is None else round(per_min, 2),
                "span_s": round(self.span_s, 3),
                "idle_s": round(self.idle_s, 3),
                "runs": self.runs,
                "bucket_s": round(self.bucket_s, 3),
                "buckets": [
                    {
                        "start_s": round(b.start_s, 3),
                        "images": b.images,
                        "per_min": None if b.per_min is None else round(b.per_min, 2),
                    }
                    for b in self.buckets
                ],
            },
        }


def _buckets(times: list[float], n: int) -> tuple[float, float, tuple[Bucket, ...]]:
    """Succeeded images per equal slice of [first, last] finish time, each at least a second."""
    if not times:
        return 0.0, 0.0, ()
    t0, t1 = min(times), max(times)
    span = t1 - t0
    if span < MIN_SPAN_S:
        # A rate over a few milliseconds would be a meaningless huge number.
        return span, span, (Bucket(0.0, len(times), None),)
    n = max(1, min(n, math.floor(span)))
    width = span / n
    counts = [0] * n
    for t in times:
        counts[min(int((t - t0) / width), n - 1)] += 1
    return span, width, tuple(Bucket(i * width, c, c / width * 60) for i, c in enumerate(counts))


class _Busy:
    """When jobs were in flight, from every ledger line's [started_at, finished_at]: the gaps
    between runs, so that throughput counts working time only."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def add(self, rec: LedgerRecord) -> None:
        end = parse_time(rec.finished_at)
        if end is None:
            return
        start = parse_time(rec.started_at) if rec.started_at else None
        self.spans.append((min(start, end) if start is not None else end, end))

    def gaps(self) -> list[tuple[float, float]]:
        """The idle stretches longer than IDLE_GAP_S, in time order."""
        out: list[tuple[float, float]] = []
        reach: float | None = None
        for start, end in sorted(self.spans):
            if reach is not None and start - reach > IDLE_GAP_S:
                out.append((reach, start))
            reach = end if reach is None else max(reach, end)
        return out


def _without_gaps(times: list[float], gaps: list[tuple[float, float]]) -> list[float]:
    """Each time moved back by the idle stretches before it: the runs laid end to end. (A
    finish time never falls inside a gap: a gap starts where the last job in flight ended.)"""
    if not gaps:
        return times
    starts = [a for a, _ in gaps]
    before = list(itertools.accumulate((b - a for a, b in gaps), initial=0.0))
    return [t - before[bisect.bisect_left(starts, t)] for t in times]


def build_report(run_dir: Path, buckets: int = THROUGHPUT_BUCKETS) -> Report:
    """Everything from one pass over the ledger; the run folder alone, like ``status``."""
    meta = read_meta(run_dir)
    latest: dict[str, LedgerRecord] = {}
    requests_per_job: dict[str, int] = {}
    cost = 0.0
    redos: dict[str, int] = {}
    unsettled = read_unsettled(run_dir)
    busy = _Busy()
    for rec in iter_ledger(run_dir / LEDGER_NAME):
        latest[rec.job_id] = rec
        busy.add(rec)
        cost += rec.cost_usd
        requests_per_job[rec.job_id] = requests_per_job.get(rec.job_id, 0) + rec.attempts
        if rec.replaces and rec.succeeded:
            redos[rec.job_id] = redos.get(rec.job_id, 0) + 1
        if unsettled:
            unsettled.settle(rec.job_id, rec.started_at)
    current = current_ids(run_dir)
    status = status_from_latest(run_dir, meta, latest, cost, current)
    set_unsettled(status, unsettled)
    if current is not None:
        latest = {k: r for k, r in latest.items() if k in current}
    found = add_review(status, latest, redos)
    rejected = tuple(sorted((k, v.note) for k, v in found.items()
                            if v.verdict is Verdict.REJECTED))
    errors: dict[str, ErrorKindSummary] = {}
    latencies: list[float] = []
    times: list[float] = []
    by_size: dict[str, int] = {}
    for rec in latest.values():
        if rec.succeeded:
            latencies.append(rec.latency_s)
            by_size[rec.image_size or "?"] = by_size.get(rec.image_size or "?", 0) + 1
            t = parse_time(rec.finished_at)
            if t is not None:
                times.append(t)
        elif rec.error is not None:
            seen = errors.get(rec.error.kind)
            if seen is None:
                errors[rec.error.kind] = ErrorKindSummary(
                    1, rec.error.retryable, rec.error.message, rec.job_id
                )
            else:
                errors[rec.error.kind] = ErrorKindSummary(
                    seen.count + 1, seen.retryable, seen.example, seen.example_job
                )
    latencies.sort()
    latency = (
        {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "mean": sum(latencies) / len(latencies),
            "max": latencies[-1],
        }
        if latencies
        else {}
    )
    attempts: dict[int, int] = {}
    for n in requests_per_job.values():
        attempts[n] = attempts.get(n, 0) + 1
    gaps = [(a, b) for a, b in busy.gaps() if times and min(times) < b and a < max(times)]
    span, width, slices = _buckets(_without_gaps(times, gaps), buckets)
    return Report(
        status=status,
        errors=errors,
        latency=latency,
        attempts=attempts,
        requests=sum(requests_per_job.values()),
        by_size=by_size,
        span_s=span,
        bucket_s=width,
        buckets=slices,
        meta=meta,
        rejected=rejected,
        idle_s=sum(b - a for a, b in gaps),
        runs=len(gaps) + 1,
    )


def _sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if top == 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(int(v / top * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)]
                   for v in values)


def _clip(text: str, width: int = 90) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def format_report(rep: Report) -> str:
    st = rep.status
    lines = [format_status(st), ""]
    if rep.errors:
        lines.append("errors (last record per job), with an example:")
        for kind, e in sorted(rep.errors.items(), key=lambda kv: -kv[1].count):
            how = "retryable" if e.retryable else "permanent"
            lines.append(f"  {kind:<16} {e.count:>6}  {how}  e.g. {e.example_job}:")
            lines.append(f"      {_clip(e.example)}")
        lines.append("")
    if rep.rejected:
        lines.append(f"rejected in review ({len(rep.rejected)}; run --redo-rejected makes them "
                     "again):")
        for job_id, note in rep.rejected[:REJECTED_SHOWN]:
            lines.append(f"  {job_id}" + (f"  {_clip(note, 70)}" if note else ""))
        if len(rep.rejected) > REJECTED_SHOWN:
            lines.append(f"  ... and {len(rep.rejected) - REJECTED_SHOWN} more")
        lines.append("")
    if rep.latency:
        lat = rep.latency
        lines.append(
            f"latency (succeeded)  p50 {lat['p50']:.2f}s  p90 {lat['p90']:.2f}s  "
            f"p99 {lat['p99']:.2f}s  mean {lat['mean']:.2f}s  max {lat['max']:.2f}s"
        )
    if rep.attempts:
        hist = ", ".join(f"{k}: {v}" for k, v in sorted(rep.attempts.items()))
        lines.append(
            f"attempts per job     {hist}  (mean {rep.mean_attempts:.2f}, {rep.requests} requests)"
        )
    per_image = rep.per_image_usd
    spend = f"spend                ${st.cost_usd:.2f}"
    if per_image is not None:
        spend += f", ${per_image:.4f} per succeeded image"
    lines.append(spend)
    if rep.by_size:
        sizes = ", ".join(f"{n} x {s}" for s, n in sorted(rep.by_size.items()))
        lines.append(f"images by size       {sizes}")
    if rep.buckets:
        rate = rep.images_per_min
        lines.append("")
        if rate is None:
            lines.append(
                f"throughput: {plural(st.succeeded, 'image')}, all finished within a second"
            )
        else:
            spark = _sparkline([b.images for b in rep.buckets])
            idle = (f" of work ({rep.runs} runs; {_duration(rep.idle_s, sign='')} idle between "
                    "them left out)" if rep.runs > 1 else "")
            lines.append(f"throughput: {rate:.1f} images/min over "
                         f"{_duration(rep.span_s, sign='')}{idle}  {spark}")
            lines.append(f"  {'from':>8}  {'images':>6}  {'per min':>8}")
            for b in rep.buckets:
                per_min = "" if b.per_min is None else f"{b.per_min:.1f}"
                lines.append(f"  {_duration(b.start_s):>8}  {b.images:>6}  {per_min:>8}")
    return "\n".join(lines)


def _duration(seconds: float, sign: str = "+") -> str:
    if seconds < 60:
        return f"{sign}{seconds:.1f}s"
    if seconds < 3600:
        return f"{sign}{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{sign}{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
