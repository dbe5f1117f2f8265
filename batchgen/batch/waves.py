"""Batch mode's waves (issue 22): a chained job goes into a batch only once its parents are
collected; the roots go first, each later wave once the one before it came back (the next
run, or the next turn of ``--wait``'s loop, submits it).

A child whose parent failed for good is recorded once as ``parent_failed`` (never sent, never
billed); one whose parent is still in a batch, or waiting, is held for a later wave.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .. import errors as e
from ..planning.lineage import Lineage
from ..planning.plan import RETRYABLE, STALE, SUCCEEDED
from ..spec import JobSpec
from .recorder import Recorder

_NOT_YET = frozenset({None, RETRYABLE, STALE, "in_batch", "missing", "rejected"})


class Waves:
    def __init__(self, lineage: Lineage | None, states: dict[str, str], recorder: Recorder
                 ) -> None:
        self.lineage = lineage
        self.states = states
        self.recorder = recorder
        self.held = 0  # chained jobs of the last pass waiting for a later wave

    def ready(self, jobs: Iterable[JobSpec]) -> Iterator[JobSpec]:
        """``jobs`` without the children whose parents are not collected yet; the others with
        their parents' images and conversation filled in."""
        lineage = self.lineage
        self.held = 0
        if lineage is None:
            yield from jobs
            return
        lineage.clear()  # parents collected since the last pass have sidecars now
        states = self.states
        for job in jobs:
            chain = job.chain
            if chain is None or not chain.parents:
                yield job
                continue
            parents = [(p, states.get(p)) for p in chain.parents]
            failed = next((p for p, s in parents if s not in _NOT_YET and s != SUCCEEDED), None)
            if failed is not None:
                why = e.ParentFailedError(f"not sent: its parent {failed} failed for good")
                self.recorder.failure(job, why, batch=None, started="", latency=0.0, line=None)
                continue
            made = lineage.ready(job) if all(s == SUCCEEDED for _, s in parents) else None
            if made is None:
                self.held += 1
                continue
            yield made
