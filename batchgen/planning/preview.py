"""``run --preview N``: N pending jobs that show as much of the manifest as N jobs can.

Each job shows its row and one value of each of its vars. The jobs are chosen greedily, each
the one that shows the most not shown yet (the jobs already done count as shown): so every row
and every value of every var appears before any repeats, as far as N allows. A 4 x 3 matrix
with ``--preview 4`` shows all 4 values of one var and all 3 of the other, where the first 4
jobs in manifest order would show one value of the first var. Between equally good jobs the one
farther along a van der Corput order of the manifest wins (first, middle, quarters, ...), so a
preview of a long list of plain rows is spread over it instead of taking its head. When all is
shown, a second round starts as if nothing were.

Lazy greedy (the gains only fall as more is shown): a heap of each job's last known gain, the
top one's gain computed again before it is taken. Picking 50 of a million jobs takes a few
heap operations per pick, not a pass over the million.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from ..spec import JobSpec


@dataclass(frozen=True, slots=True)
class Rest:
    """What the jobs a preview left out would take: their count and cost, live and batch."""

    jobs: int
    live_usd: float
    batch_usd: float


def features(job: JobSpec, intern: dict[tuple[str, ...], int]) -> tuple[int, ...]:
    """What a job shows: its row and each (var, value), as small ints."""
    keys = [("row", job.source_file, str(job.source_line))]
    keys += [("var", name, value) for name, value in job.vars]
    out = []
    for key in keys:
        fid = intern.get(key)
        if fid is None:
            fid = intern[key] = len(intern)
        out.append(fid)
    return tuple(out)


def _spread_rank(i: int, bits: int) -> int:
    """``i`` with its ``bits`` low bits reversed: 0, half, quarter, three quarters, ..."""
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


def pick(jobs: Iterable[tuple[JobSpec, bool]], n: int) -> list[int]:
    """Up to ``n`` of the candidates in ``jobs`` ((job, True); (job, False): a job already done,
    which counts as shown), chosen to spread: their positions among the candidates, in order."""
    intern: dict[tuple[str, ...], int] = {}
    covered: set[int] = set()
    feats: list[tuple[int, ...]] = []
    for job, candidate in jobs:
        if candidate:
            feats.append(features(job, intern))
        else:
            covered.update(features(job, intern))
    total = len(feats)
    if total <= n:
        return list(range(total))
    bits = (total - 1).bit_length()
    ranks = [_spread_rank(i, bits) for i in range(total)]

    def gain(i: int) -> int:
        return sum(1 for f in feats[i] if f not in covered)

    heap = [(-gain(i), ranks[i], i) for i in range(total)]
    heapq.heapify(heap)
    chosen: list[int] = []
    while len(chosen) < n and heap:
        neg, rank, i = heapq.heappop(heap)
        now = gain(i)
        if now != -neg:
            heapq.heappush(heap, (-now, rank, i))
            continue
        if now == 0 and covered:
            # Everything this run can show is shown: a second round, as if nothing were.
            covered.clear()
            heapq.heappush(heap, (0, rank, i))
            heap = [(-gain(j), r, j) for _, r, j in heap]
            heapq.heapify(heap)
            continue
        chosen.append(i)
        covered.update(feats[i])
    return sorted(chosen)
