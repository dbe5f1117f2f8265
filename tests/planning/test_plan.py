"""Planning in one pass (batchgen/planning/plan.py): the plan counted during validation matches a
pass of its own."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from batchgen.manifest import Manifest
from batchgen.planning.plan import RETRYABLE, SUCCEEDED, LedgerIndex, Plan, PlanCounts
from batchgen.pricing import PriceTable
from batchgen.settings import Selection
from batchgen.spec import JobSpec
from tests.helpers.rows import _jsonl


def _reference_count(plan: Plan, jobs: list[JobSpec], price: PriceTable) -> PlanCounts:
    """The plan count as it was written before it became a per-job callback."""
    c = PlanCounts()
    for job in jobs:
        if not plan.selection.in_scope(job.job_id):
            continue
        c.total += 1
        state = plan.index.get(job.job_id)
        if state is None:
            c.new += 1
        if plan.wants(job):
            if plan.selection.limit is None or c.pending < plan.selection.limit:
                c.pending += 1
                c.by_size[job.image_size] = c.by_size.get(job.image_size, 0) + 1
                c.estimate_usd += price.estimate(job)
        elif state == SUCCEEDED:
            c.done += 1
        elif state is not None and state != RETRYABLE:
            c.failed_skipped += 1
    return c


@pytest.mark.parametrize(
    "selection",
    [
        Selection(),
        Selection(limit=3),
        Selection(only="a-fox*"),
        Selection(retry_failed=()),
        Selection(retry_failed=("blocked",), only="*-1-*"),
        Selection(shard=(2, 3), limit=4),
    ],
    ids=repr,
)
def test_counting_during_validation_matches_a_pass_of_its_own(
    tmp_path: Path, selection: Selection
) -> None:
    path = _jsonl(tmp_path / "m.jsonl")
    jobs = list(Manifest(path).iter_jobs())
    rng = random.Random(7)
    states = [SUCCEEDED, RETRYABLE, "blocked", "no_image", None]
    index = LedgerIndex()
    for job in jobs:
        state = rng.choice(states)
        if state is not None:
            index.states[job.job_id] = state
    prices = PriceTable.load(None)
    m = Manifest(path)
    plan = Plan(m.iter_jobs, index, selection, prices.estimate)
    m.validate(visit=plan.count_job)
    expected = _reference_count(plan, jobs, prices)
    assert plan.counts == expected
    assert Plan(m.iter_jobs, index, selection).count(prices.estimate) == expected
    sent = [j.job_id for j in plan]
    assert len(sent) == expected.pending
