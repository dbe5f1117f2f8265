"""The planning pass's visit to each job, and the resume line it leads to.

``Tally.visit`` is what ``prepare`` hands ``Manifest.validate``: it counts the plan, records the
jobs the manifest holds now (``jobs.jsonl``) and tells jobs that simply have not run yet from new
or changed ones, so one pass over a million-row manifest does all three.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..folder.current import CurrentWriter, current_ids
from ..spec import JobSpec
from .plan import REJECTED, RETRYABLE, SUCCEEDED, Plan


class Tally:
    """The ``visit`` that ``run`` hands ``Manifest.validate``: counts the plan, records the
    current jobs, and tells jobs that simply have not run yet from new or changed ones.

    It runs once per job of a million-row manifest, so it is one flat function over locals.
    """

    def __init__(self, plan: Plan, current: CurrentWriter, previous: set[str] | None) -> None:
        self.plan = plan
        self.current = current
        self.previous = previous
        self.untouched = 0  # no ledger line, but the manifest already held it last time
        self._open = 0  # in scope, not done, and a plain run (no --only, no --limit) would send
        self._wanted = 0  # what this run would send without --limit
        self._fast = (previous is None and plan.selection.only is None
                      and plan.selection.ids is None)
        self.visit = self._make_visit()

    @property
    def open(self) -> int:
        return self._open if not self._fast else self._not_settled()

    @property
    def wanted(self) -> int:
        return self._wanted if not self._fast else self._not_settled()

    def _not_settled(self) -> int:
        # Without --only, what a run would send without --limit is every counted job that is
        # neither done nor a permanent failure left alone: exactly how the plan counts.
        c = self.plan.counts
        return c.total - c.done - c.failed_skipped

    def _make_visit(self) -> Callable[[JobSpec], None]:
        plan, previous = self.plan, self.previous
        count_job = plan.count_job
        states = plan.index.states
        sel = plan.selection
        shard, retry = sel.shard, sel.retry_failed
        covers, picked = sel.covers, sel.picked
        add = self.current.add
        if self._fast and shard is None:
            # The common case: the plan's own counts tell the rest (see _not_settled), so only
            # the current jobs are recorded. It runs once per job: two calls and no more.
            def record(job: JobSpec) -> None:
                count_job(job)
                add(job)

            return record
        if self._fast:

            def record_shard(job: JobSpec) -> None:
                count_job(job)
                if covers(job):
                    add(job)

            return record_shard

        def visit(job: JobSpec) -> None:
            count_job(job)
            job_id = job.job_id
            if shard is not None and not covers(job):
                return
            add(job)
            state = states.get(job_id)
            if state == SUCCEEDED:
                return
            if state is None:
                if previous is not None and job_id in previous:
                    self.untouched += 1
            elif state not in (RETRYABLE, REJECTED) and (
                    retry is None or (retry and state not in retry)):
                return  # a permanent failure this run leaves alone
            self._open += 1
            if picked(job_id):
                self._wanted += 1

        return visit


def previous_ids(folder: Path, old_meta: dict[str, Any], new_sha: str) -> set[str] | None:
    """The last planning's current jobs, needed only when the manifest changed since."""
    if not old_meta or old_meta.get("manifest_sha256") in (None, new_sha):
        return None
    return current_ids(folder)


def describe_resume(
    old_meta: dict[str, Any],
    new_sha: str,
    counts: Any,
    untouched: int,
    previous: set[str] | None,
) -> str | None:
    """One line saying how a resumed run differs from the last, or None for a first run."""
    if not old_meta:
        return None
    changed = old_meta.get("manifest_sha256") not in (None, new_sha)
    skipped = f"{counts.failed_skipped} failed and skipped, {counts.pending} to run"
    if not changed:
        # Same manifest: a job with no ledger line was never reached (--limit, a stop).
        return f"resuming: {counts.done} done, {counts.new} not run yet, {skipped}"
    if previous is None:
        return (
            f"manifest changed since the last run: {counts.done} done, "
            f"{counts.new} new, changed or not run yet, {skipped}"
        )
    return (
        f"manifest changed since the last run: {counts.done} done, "
        f"{counts.new - untouched} new or changed, {untouched} not run yet, {skipped}"
    )

