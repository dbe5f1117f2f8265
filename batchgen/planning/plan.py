"""The plan: which of the manifest's jobs still need a request, judged by the ledger alone.

The ledger is read once into a compact index (job id -> state), not into full records, so a
million-line ledger plans in seconds and well under a gigabyte. ``run.json`` keeps the run's
settings and the manifest's hash so a resumed run can say what changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..folder.intents import Unsettled, read_unsettled
from ..folder.layout import IMAGES_DIR, count_images
from ..folder.ledger import (
    BadAmount,
    LedgerRecord,
    amount,
    bad_amount,
    check_job_id,
    loads_nonfinite,
    warn_bad_line,
)
from ..folder.ownership import manifest_key
from ..folder.runfolder import RunFolder
from ..settings import Selection
from ..spec import JOB_ID_FORM, JobSpec
from ..store.recovery import adopt_orphans
from .lineage import Lineage

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
RETRYABLE = "retryable"
# Sits in a batch that may still run (batch mode): neither sent live nor put in another batch.
IN_BATCH = "in_batch"
# Succeeded, but the image file is gone (deleted by hand): not done, and not re-run (and paid
# for again) unless the user asks with --redo-missing.
MISSING = "missing"
# Succeeded, but its image now was rejected in review: set only by --redo-rejected, which sends
# these again (and only these).
REJECTED = "rejected"
# Succeeded, but a parent's current image is not the one it was made from (a chained job whose
# parent was made again): superseded, so it runs again (issue 22).
STALE = "stale"
PARENT_FAILED = "parent_failed"  # a chained job whose parent failed for good (never sent)
# Bigger than the default 8 KiB: a 750 MB ledger is then 12,000 reads instead of 92,000.
_READ_BUFFER = 1 << 16


@dataclass(slots=True)
class LedgerIndex:
    """job id -> "succeeded", "missing", "retryable", or the error kind of a permanent failure;
    the spend; and the requests earlier runs sent whose outcome never reached the ledger."""

    states: dict[str, str] = field(default_factory=dict)
    cost_usd: float = 0.0
    unsettled: Unsettled = field(default_factory=Unsettled)
    # Batch results that succeeded (first copies) and the extra copies the service billed: what
    # batch mode's budget reserves for duplicates from (batch/margin.py).
    batch_results: int = 0
    batch_duplicates: int = 0

    def get(self, job_id: str) -> str | None:
        return self.states.get(job_id)


def read_index(ledger: Path) -> LedgerIndex:
    """The last line per job wins. A torn or garbled line is skipped with a warning; an amount
    that is not a finite, non-negative number is an :class:`InputError` naming the line.

    The same lines count as for :func:`~batchgen.ledger.iter_lines`, read in one flat loop: at a
    million lines every generator layer and tuple per line shows. A succeeded job whose image
    is gone gets the state :data:`MISSING` (see :func:`_find_missing`). The intents of requests
    that earlier runs sent are settled by the ledger lines of their jobs' runs.
    """
    index = LedgerIndex()
    states = index.states
    intern = sys.intern
    loads = orjson.loads
    is_job_id = JOB_ID_FORM.fullmatch
    unsettled = index.unsettled = read_unsettled(ledger.parent)
    settle = unsettled.settle if unsettled else None
    cost = 0.0
    results = duplicates = 0
    try:
        fh = ledger.open("rb", buffering=_READ_BUFFER)
    except FileNotFoundError:
        return index
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                try:
                    d = loads(raw)
                except ValueError:
                    d = loads_nonfinite(raw)  # NaN, 1e999: an amount refused below, not a skip
                job_id = d["job_id"]  # TypeError for a line that is JSON but not an object
                if type(job_id) is not str or not is_job_id(job_id):
                    check_job_id(ledger, lineno, job_id)
                if d["status"] == SUCCEEDED:
                    state = SUCCEEDED
                else:
                    err = d.get("error") or {}
                    state = RETRYABLE if err.get("retryable") else intern(str(err.get("kind")))
                usd = d.get("cost_usd")
                if usd:
                    cost += amount(usd)
                if settle is not None:
                    settle(job_id, str(d.get("started_at", "")))
                if state == SUCCEEDED and d.get("batch"):
                    extra = d.get("extra")
                    if type(extra) is dict and extra.get("duplicate"):
                        duplicates += 1
                    else:
                        results += 1
            except BadAmount as exc:
                raise bad_amount(ledger, lineno, exc) from None
            except (ValueError, KeyError, TypeError, AttributeError):  # JSONDecodeError too
                if raw.strip():  # blank lines are skipped quietly
                    warn_bad_line(ledger, lineno, raw)
                continue
            states[job_id] = state
    index.cost_usd = cost
    index.batch_results, index.batch_duplicates = results, duplicates
    _find_missing(ledger, states)
    return index


def mark_in_batch(run_dir: Path, index: LedgerIndex) -> None:
    """Mark the jobs that sit in one of the folder's open batches (batch mode) as IN_BATCH, so
    that no plan, live or batch, sends them again while the batch may still deliver them."""
    from ..folder.batches import Journal
    from ..folder.layout import JOURNAL_NAME

    if not (run_dir / JOURNAL_NAME).exists():
        return
    states = index.states
    for job_id in Journal(run_dir).open_job_ids():
        if states.get(job_id) != SUCCEEDED:
            states[job_id] = IN_BATCH


def _find_missing(ledger: Path, states: dict[str, str]) -> None:
    """Mark MISSING the succeeded jobs whose image file is gone.

    Counting the image files first costs one directory listing; only when there are fewer than
    succeeded jobs (images were deleted) is the ledger read again with a ``stat`` per succeeded
    line. A million stats would add seconds to every resume of a big folder that is whole.
    """
    succeeded = sum(1 for state in states.values() if state == SUCCEEDED)
    if not succeeded or count_images(ledger.parent / IMAGES_DIR) >= succeeded:
        return
    root = str(ledger.parent) + os.sep
    exists = os.path.exists
    loads = orjson.loads
    with ledger.open("rb", buffering=_READ_BUFFER) as fh:
        for raw in fh:
            if b'"succeeded"' not in raw:
                continue
            try:
                d = loads(raw)
                job_id = d["job_id"]
                if d["status"] != SUCCEEDED or states.get(job_id) not in (SUCCEEDED, MISSING):
                    continue
                whole = all(exists(root + out) for out in d.get("outputs") or ())
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            states[job_id] = SUCCEEDED if whole else MISSING  # the last such line wins


def manifest_meta(path: Path) -> dict[str, str]:
    """What run.json says of the manifest, live or batch: the path that owns the folder (one
    folder, one manifest) and the content's hash (merge tells shards of one manifest apart)."""
    return {"manifest": str(path), "manifest_path": manifest_key(path),
            "manifest_sha256": manifest_sha256(path)}


def manifest_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(slots=True)
class PlanCounts:
    total: int = 0
    done: int = 0
    failed_skipped: int = 0
    pending: int = 0
    new: int = 0
    in_batch: int = 0
    missing: int = 0  # recorded as succeeded, image file gone
    superseded: int = 0  # chained jobs made from a parent image that is no longer current
    left_out: int = 0  # chained jobs whose parent is neither made nor in this run
    by_size: dict[str, int] = field(default_factory=dict)
    estimate_usd: float = 0.0


class Plan:
    """Streams the jobs to send, in manifest order, and counts them.

    ``run`` counts in the same pass that validates the manifest: :meth:`count_job` is the
    callback it hands ``Manifest.validate``, adding into :attr:`counts`. :meth:`count` is the
    same count over a pass of its own.
    """

    def __init__(
        self,
        jobs: Callable[[], Iterable[JobSpec]],
        index: LedgerIndex,
        selection: Selection,
        price: Callable[[JobSpec], float] | None = None,
    ) -> None:
        # A factory, not an iterable: the manifest is streamed once to count, once to run.
        self._jobs = jobs
        self.index = index
        self.selection = selection
        self.price = price
        self.counts = PlanCounts()
        # Chains (issue 22): every chained job seen, by id (a child's conversation is rebuilt
        # from its ancestors' specs), and the run folder's sidecars (set by prepare).
        self.chained: dict[str, JobSpec] = {}
        self.lineage: Lineage | None = None
        self._coming: set[str] = set()  # chained jobs this run sends (their children may come)

    def wants(self, job: JobSpec) -> bool:
        """Whether this invocation sends the job: in scope, picked, and not settled yet."""
        job_id = job.job_id
        if job.chain is not None:
            self._see_chained(job)
        return (self.selection.covers(job) and self._wants(job_id, self.index.get(job_id))
                and (job.chain is None or self._parents_come(job)))

    def _parents_come(self, job: JobSpec) -> bool:
        """A chained job this run wants: whether each parent is made, or will be in this run
        (or failed for good: the child is then recorded as parent_failed, unsent). A child
        whose parent ``--only`` or ``--limit`` leaves out is left out too, and counted."""
        chain = job.chain
        assert chain is not None
        states = self.index.states
        for parent in chain.parents:
            state = states.get(parent)
            if state == SUCCEEDED or parent in self._coming:
                continue
            if state is None or state in (RETRYABLE, STALE, IN_BATCH, MISSING, REJECTED):
                return False
        self._coming.add(job.job_id)
        return True

    def _see_chained(self, job: JobSpec) -> None:
        """Register a chained job; a succeeded child whose parent's image changed (or will be
        made again in this run) becomes STALE: superseded, and run again."""
        self.chained[job.job_id] = job
        chain = job.chain
        states = self.index.states
        if chain is None or not chain.parents:
            return
        if states.get(job.job_id) == PARENT_FAILED:
            # Failed only for its parent: it runs again once the parent is made (or retried).
            if all(states.get(p) == SUCCEEDED or p in self._coming for p in chain.parents):
                states[job.job_id] = RETRYABLE
            return
        if states.get(job.job_id) != SUCCEEDED:
            return
        lineage = self.lineage
        rec = lineage.record(job.job_id) if lineage is not None else None
        if lineage is None or rec is None:
            return
        made = {p.get("job_id"): p.get("sha256") for p in rec.parents}
        for parent in chain.parents:
            state = states.get(parent)
            now = lineage.record(parent)
            if state != SUCCEEDED or now is None or now.sha256 != made.get(parent):
                states[job.job_id] = STALE
                return

    def _wants(self, job_id: str, state: str | None) -> bool:
        """``wants`` for a job already known to be in scope, with its ledger state."""
        if state in (SUCCEEDED, IN_BATCH) or not self.selection.picked(job_id):
            return False
        if state is None or state in (RETRYABLE, STALE):
            return True
        if state == MISSING:
            return self.selection.redo_missing
        if state == REJECTED:
            return self.selection.redo_rejected
        retry = self.selection.retry_failed
        return retry is not None and (not retry or state in retry)

    def count_job(self, job: JobSpec) -> None:
        """Count one job into :attr:`counts`: done, skipped, or to send (and its price)."""
        job_id = job.job_id
        sel = self.selection
        if job.chain is not None:
            self._see_chained(job)
        if sel.shard is not None and not sel.covers(job):
            return
        c = self.counts
        c.total += 1
        state = self.index.states.get(job_id)
        if state == STALE:
            c.superseded += 1
        if state is None:
            c.new += 1
            wanted = sel.picked(job_id)
        elif state == SUCCEEDED:
            c.done += 1
            return
        elif state == IN_BATCH:
            c.in_batch += 1
            return
        elif state == MISSING:
            c.missing += 1
            wanted = self._wants(job_id, state)
            if not wanted:
                return
        elif state == REJECTED:
            wanted = self._wants(job_id, state)
            if not wanted:
                c.done += 1
                return
        else:
            wanted = self._wants(job_id, state)
        if wanted and job.chain is not None and not self._parents_come(job):
            c.left_out += 1
            return
        if wanted:
            if sel.limit is None or c.pending < sel.limit:
                c.pending += 1
                c.by_size[job.image_size] = c.by_size.get(job.image_size, 0) + 1
                if self.price is not None:
                    c.estimate_usd += self.price(job)
        elif state is not None and state != RETRYABLE:
            c.failed_skipped += 1

    def count(self, price: Callable[[JobSpec], float] | None = None) -> PlanCounts:
        """A pass over the manifest of its own: what is done, what is skipped, what a run would
        send. Starts :attr:`counts` over, priced with ``price``."""
        self.price = price
        self.counts = PlanCounts()
        count_job = self.count_job
        for job in self._jobs():
            count_job(job)
        return self.counts

    def __iter__(self) -> Iterator[JobSpec]:
        sent = 0
        for job in self._jobs():
            if self.selection.limit is not None and sent >= self.selection.limit:
                return
            if self.wants(job):
                sent += 1
                yield job


def describe_change(old_meta: dict[str, Any], new_sha: str, counts: PlanCounts) -> str | None:
    """One line saying how a resumed run differs from the last, or None for a first run."""
    if not old_meta:
        return None
    changed = old_meta.get("manifest_sha256") not in (None, new_sha)
    head = "manifest changed since the last run" if changed else "resuming"
    return (
        f"{head}: {counts.done} done, {counts.new} new or changed, "
        f"{counts.failed_skipped} failed and skipped, {counts.pending} to run"
    )


def describe_missing(counts: PlanCounts, redo: bool) -> str | None:
    """The plan line for succeeded jobs whose image file is gone."""
    if not counts.missing:
        return None
    if redo:
        return f"{counts.missing} recorded images are missing; --redo-missing runs them again"
    return (
        f"{counts.missing} recorded images are missing; they are not run again "
        "(that costs money) unless you add --redo-missing"
    )


def find_orphans(folder: RunFolder, index: LedgerIndex) -> list[LedgerRecord]:
    """Images saved with their sidecar whose ledger line never got written (a crash or a
    failed ledger write between the two): paid for, so they are adopted, not sent again.
    They enter ``index`` at once so the plan and the budget see them."""
    if not (folder.path / IMAGES_DIR).is_dir():
        return []  # nothing saved, nothing to adopt: skip the set of a million done ids
    done = {job_id for job_id, state in index.states.items() if state == SUCCEEDED}
    adopted = adopt_orphans(folder.path, done)
    for rec in adopted:
        index.states[rec.job_id] = SUCCEEDED
        index.cost_usd += rec.cost_usd
        index.unsettled.settle(rec.job_id, rec.started_at)
    return adopted
