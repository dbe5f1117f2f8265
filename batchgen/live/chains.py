"""Live scheduling of chained jobs (issue 22): a child is queued only once its parents have
succeeded, and waits outside the queue, holding no worker and no request slot.

A parent that fails for good fails its waiting children once (``parent_failed``: no request,
no charge), and theirs after them; a parent that stays pending (a transient failure, a stop)
leaves them pending for the next run. A child whose parent is neither done nor in this run
(``--only``, ``--limit``) is left out and counted, so the run can say so.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
from collections import deque

from ..planning.lineage import Lineage
from ..planning.plan import SUCCEEDED
from ..spec import JobSpec

log = logging.getLogger(__name__)

# Parent states that say "not made yet, may be made later": the child stays pending.
_NOT_YET = frozenset({"retryable", "stale", "in_batch", "missing", "rejected"})


class Outcome(str, enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # for good: the children fail too
    PENDING = "pending"  # a transient failure or a stop: the children wait for another run


class ChainScheduler:
    """Children held back until their parents are settled; ``ready`` and ``failed`` are what
    the producer takes from (``changed`` is set whenever either grows)."""

    def __init__(self, lineage: Lineage, states: dict[str, str]) -> None:
        self._lineage = lineage
        self._states = states
        self._running: set[str] = set()
        self._outcome: dict[str, Outcome] = {}
        self._waiting: dict[str, tuple[JobSpec, set[str]]] = {}
        self._children: dict[str, list[str]] = {}
        self.ready: deque[JobSpec] = deque()
        self.failed: deque[tuple[JobSpec, str]] = deque()
        self.changed = asyncio.Event()
        self.left_out = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def offer(self, job: JobSpec) -> JobSpec | None:
        """The job to queue now (its parents' images and turns filled in), or None: it waits,
        has failed (in ``failed``), or is left out."""
        chain = job.chain
        if chain is None or not chain.parents:
            if chain is not None:
                self._running.add(job.job_id)  # a root: its children wait for it
            return job
        blocked: set[str] = set()
        for parent in chain.parents:
            outcome = self._outcome.get(parent)
            if outcome is None and (parent in self._running or parent in self._waiting):
                blocked.add(parent)
                continue
            if outcome is None:
                outcome = self._from_ledger(parent)
            if outcome is Outcome.FAILED:
                self._fail(job, parent)
                return None
            if outcome is Outcome.PENDING:
                self._leave_out(job)
                return None
        if blocked:
            self._waiting[job.job_id] = (job, blocked)
            for parent in blocked:
                self._children.setdefault(parent, []).append(job.job_id)
            return None
        return self._start(job)

    def finished(self, job_id: str, outcome: Outcome) -> None:
        """A job of this run is settled: its waiting children move on."""
        if self._children.get(job_id):
            _crash_point("chain_parent_done")
        self._running.discard(job_id)
        self._outcome[job_id] = outcome
        if outcome is Outcome.SUCCEEDED:
            self._lineage.forget(job_id)
        for child_id in self._children.pop(job_id, ()):
            found = self._waiting.get(child_id)
            if found is None:
                continue
            child, blocked = found
            if outcome is Outcome.FAILED:
                del self._waiting[child_id]
                self._fail(child, job_id)
            elif outcome is Outcome.PENDING:
                del self._waiting[child_id]
                self._leave_out(child, quiet=True)
            else:
                blocked.discard(job_id)
                if not blocked:
                    del self._waiting[child_id]
                    started = self._start(child)
                    if started is not None:
                        self.ready.append(started)
        self.changed.set()

    def _from_ledger(self, parent: str) -> Outcome:
        state = self._states.get(parent)
        if state == SUCCEEDED:
            return Outcome.SUCCEEDED
        if state is None or state in _NOT_YET:
            return Outcome.PENDING
        return Outcome.FAILED

    def _start(self, job: JobSpec) -> JobSpec | None:
        ready = self._lineage.ready(job)
        if ready is None:  # a parent's image is not on disk after all
            log.warning("%s: a parent's image is missing; left for another run", job.job_id)
            self._leave_out(job)
            return None
        self._running.add(job.job_id)
        return ready

    def _fail(self, job: JobSpec, parent: str) -> None:
        self._running.add(job.job_id)  # settled by the producer's record: finished(FAILED)
        self.failed.append((job, parent))
        self.changed.set()

    def _leave_out(self, job: JobSpec, *, quiet: bool = False) -> None:
        if not quiet:
            self.left_out += 1
        # Its own children then wait for another run too.
        self._outcome[job.job_id] = Outcome.PENDING
        for child_id in self._children.pop(job.job_id, ()):
            found = self._waiting.pop(child_id, None)
            if found is not None:
                self._leave_out(found[0], quiet=True)


def _crash_point(name: str) -> None:
    """Test hook, as batch mode's: ``BATCHGEN_TEST_CRASH_AT=chain_parent_done`` kills the run
    with SIGKILL once a parent is recorded and before its children are sent."""
    if os.environ.get("BATCHGEN_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
