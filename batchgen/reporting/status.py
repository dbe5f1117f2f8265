"""Reading a run folder's counts and spend back: ``batchgen status`` (and the top of ``batchgen
report`` and of the gallery).

Reads ``DIR/run.json`` and ``DIR/ledger.jsonl`` alone: no manifest, no key. Kept apart from the
report and the planner so that ``status`` imports little and starts fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..folder.chains import ChainCounts, read_chain_counts
from ..folder.current import current_ids
from ..folder.intents import Unsettled, read_unsettled
from ..folder.layout import IMAGES_DIR, SUPERSEDED_DIR, count_images
from ..folder.ledger import LEDGER_NAME, LedgerRecord, iter_ledger
from ..folder.liveness import describe_state
from ..folder.reviews import Review, Verdict, read_reviews
from ..folder.runfolder import read_meta
from ..folder.verdicts import has_reviews, verdicts
from ..words import plural


@dataclass(slots=True)
class Status:
    run_dir: Path
    jobs: int
    succeeded: int
    failed: int
    cost_usd: float
    errors: dict[str, int] = field(default_factory=dict)
    state: str = ""
    missing: int = 0  # recorded as succeeded, image file gone: not counted in ``succeeded``
    # Requests sent whose outcome is not in the ledger (in flight now, or when a run was killed),
    # at their reserved price: they may have been billed.
    unsettled_usd: float = 0.0
    unsettled_requests: int = 0
    # Of those, the ones whose job was run again since: a killed run's request, never to be
    # heard of, counted as spent at its reserved price (folder/intents.py, Unsettled.lost).
    lost_usd: float = 0.0
    lost_requests: int = 0
    # Succeeded jobs the manifest no longer holds (an edited or removed row): their images stay
    # until `batchgen prune`, and they are not counted as succeeded; of them, those whose
    # image prune has moved to DIR/superseded/ (the rest are still in images/).
    superseded: int = 0
    superseded_moved: int = 0
    # Verdicts on the current images (reviews.jsonl; None: nothing was ever reviewed, so every
    # image is unreviewed), and the redos of rejected images: jobs redone, redos in all.
    review: dict[str, int] | None = None
    redone_jobs: int = 0
    redos: int = 0
    # Chains (issue 22): None when no job hangs on another.
    chains: ChainCounts | None = None

    @property
    def pending(self) -> int:
        return max(self.jobs - self.succeeded - self.missing - self.failed, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "succeeded": self.succeeded,
            "missing": self.missing,
            "failed": self.failed,
            "pending": self.pending,
            "superseded": self.superseded,
            "superseded_in_images": self.superseded - self.superseded_moved,
            "superseded_moved": self.superseded_moved,
            "cost_usd": round(self.cost_usd, 4),
            "unsettled_usd": round(self.unsettled_usd, 4),
            "unsettled_requests": self.unsettled_requests,
            "lost_usd": round(self.lost_usd, 4),
            "lost_requests": self.lost_requests,
            "errors": dict(sorted(self.errors.items())),
            "review": self.review if self.review is not None else {
                "accepted": 0, "rejected": 0, "unreviewed": self.succeeded},
            "redos": {"jobs": self.redone_jobs, "redos": self.redos},
            **({"chains": self.chains.to_json()} if self.chains is not None else {}),
        }


def latest_records(run_dir: Path) -> tuple[dict[str, LedgerRecord], float]:
    """The last record per job and the total spend over every line."""
    latest: dict[str, LedgerRecord] = {}
    cost = 0.0
    for rec in iter_ledger(run_dir / LEDGER_NAME):
        latest[rec.job_id] = rec
        cost += rec.cost_usd
    return latest, cost


def load_status(run_dir: Path) -> Status:
    """One pass over the ledger, keeping per job only what the counts need, not its record."""
    meta = read_meta(run_dir)
    current = current_ids(run_dir)
    unsettled = read_unsettled(run_dir)
    # job id -> True if its last record succeeded, else its error kind (None: no error given)
    latest: dict[str, bool | str | None] = {}
    outputs: dict[str, tuple[str, ...]] = {}
    # Only the reviewed jobs' images are looked at: a million shas would be ~150 MB.
    reviewed = {r.job_id for r in read_reviews(run_dir)} if has_reviews(run_dir) else set()
    shas: dict[str, str] = {}
    redos: dict[str, int] = {}
    cost = 0.0
    chained = False
    for rec in iter_ledger(run_dir / LEDGER_NAME):
        chained = chained or bool(rec.parents)
        latest[rec.job_id] = True if rec.succeeded else (
            rec.error.kind if rec.error is not None else None
        )
        if rec.succeeded:
            outputs[rec.job_id] = rec.outputs
            if rec.job_id in reviewed and rec.sha256:
                shas[rec.job_id] = rec.sha256
            if rec.replaces:
                redos[rec.job_id] = redos.get(rec.job_id, 0) + 1
        elif rec.job_id in reviewed:
            shas.pop(rec.job_id, None)
        cost += rec.cost_usd
        if unsettled:
            unsettled.settle(rec.job_id, rec.started_at)
    succeeded = missing = superseded = 0
    old: list[tuple[str, ...]] = []  # the superseded jobs' outputs
    counted = 0
    errors: dict[str, int] = {}
    check = _some_missing(run_dir, len(outputs))
    found = verdicts(run_dir, shas) if reviewed else {}
    accepted = rejected = 0
    for job_id, outcome in latest.items():
        if current is not None and job_id not in current:
            if outcome is True:
                superseded += 1
                old.append(outputs.get(job_id, ()))
            continue
        counted += 1
        if outcome is True:
            if check and _is_missing(run_dir, outputs.get(job_id, ())):
                missing += 1
            else:
                succeeded += 1
                verdict = found.get(job_id)
                if verdict is not None:
                    accepted += verdict.verdict is Verdict.ACCEPTED
                    rejected += verdict.verdict is Verdict.REJECTED
        elif isinstance(outcome, str):
            errors[outcome] = errors.get(outcome, 0) + 1
    st = make_status(run_dir, meta, counted, succeeded, cost, errors, missing=missing,
                     current=current, superseded=superseded)
    st.superseded_moved = moved_aside(run_dir, old)
    set_unsettled(st, unsettled)
    if reviewed:
        st.review = {"accepted": accepted, "rejected": rejected,
                     "unreviewed": succeeded - accepted - rejected}
    st.redone_jobs, st.redos = len(redos), sum(redos.values())
    if chained:  # a second read, only for a folder with chains
        st.chains = read_chain_counts(run_dir)
    return st


def set_unsettled(st: Status, unsettled: Unsettled) -> None:
    """The intents no ledger line settles, split: still reserved, or lost (their job ran
    again since)."""
    lost = unsettled.lost()
    st.lost_requests = len(lost)
    st.lost_usd = sum(i.usd for i in lost)
    st.unsettled_requests = unsettled.count - st.lost_requests
    st.unsettled_usd = max(unsettled.usd - st.lost_usd, 0.0)


def _some_missing(run_dir: Path, succeeded: int) -> bool:
    """Whether any image can be missing: fewer image files than succeeded jobs (one listing,
    instead of a stat per job for a folder that is whole)."""
    return succeeded > 0 and count_images(run_dir / IMAGES_DIR) < succeeded


def _is_missing(run_dir: Path, outputs: tuple[str, ...]) -> bool:
    return any(not (run_dir / out).exists() for out in outputs)


def make_status(
    run_dir: Path,
    meta: dict[str, Any],
    latest: int,
    succeeded: int,
    cost: float,
    errors: dict[str, int] | None = None,
    *,
    missing: int = 0,
    current: set[str] | None = None,
    superseded: int = 0,
) -> Status:
    """The status of a folder whose ledger has ``latest`` current jobs, ``succeeded`` of them
    done and ``missing`` more recorded as done whose image is gone. With ``current`` (the
    manifest's jobs at the last planning) the job count is exact."""
    jobs = len(current) if current is not None else max(int(meta.get("jobs") or 0), latest)
    st = Status(
        run_dir, jobs, succeeded, latest - succeeded - missing, cost, errors or {},
        describe_state(run_dir, str(meta.get("state", ""))), missing,
    )
    st.superseded = superseded
    return st


def status_from_latest(
    run_dir: Path, meta: dict[str, Any], latest: dict[str, LedgerRecord], cost: float,
    current: set[str] | None = None,
) -> Status:
    old: list[tuple[str, ...]] = []
    if current is not None:
        old = [r.outputs for k, r in latest.items() if k not in current and r.succeeded]
        latest = {k: r for k, r in latest.items() if k in current}
    superseded = len(old)
    done = sum(1 for r in latest.values() if r.succeeded)
    missing = sum(
        1 for r in latest.values() if r.succeeded and _is_missing(run_dir, r.outputs)
    ) if _some_missing(run_dir, done + superseded) else 0
    succeeded = done - missing
    errors: dict[str, int] = {}
    for r in latest.values():
        if not r.succeeded and r.error is not None:
            errors[r.error.kind] = errors.get(r.error.kind, 0) + 1
    st = make_status(run_dir, meta, len(latest), succeeded, cost, errors, missing=missing,
                     current=current, superseded=superseded)
    st.superseded_moved = moved_aside(run_dir, old)
    return st


def moved_aside(run_dir: Path, outputs: list[tuple[str, ...]]) -> int:
    """How many of these superseded jobs' images ``prune`` has moved to DIR/superseded/ (no
    stat at all while that folder does not exist, as in a folder never pruned)."""
    aside = run_dir / SUPERSEDED_DIR
    if not outputs or not aside.is_dir():
        return 0
    return sum(1 for outs in outputs
               if outs and not (run_dir / outs[0]).exists() and (aside / outs[0]).exists())


def add_review(st: Status, latest: dict[str, LedgerRecord], redos: dict[str, int]
               ) -> dict[str, Review]:
    """The verdicts on ``latest``'s current images (and the redos) into ``st``; the verdicts,
    job id -> Review, for a caller that shows them."""
    st.redone_jobs, st.redos = len(redos), sum(redos.values())
    if not has_reviews(st.run_dir):
        return {}
    found = verdicts(st.run_dir, {k: r.sha256 for k, r in latest.items()
                                  if r.succeeded and r.sha256})
    accepted = sum(1 for v in found.values() if v.verdict is Verdict.ACCEPTED)
    rejected = sum(1 for v in found.values() if v.verdict is Verdict.REJECTED)
    st.review = {"accepted": accepted, "rejected": rejected,
                 "unreviewed": max(st.succeeded - accepted - rejected, 0)}
    return found


def format_status(st: Status) -> str:
    lines = [
        f"{st.run_dir}: {plural(st.jobs, 'job')}"
        + (f" (last run: {st.state})" if st.state else ""),
        f"  succeeded  {st.succeeded}",
        f"  failed     {st.failed}",
    ]
    for kind, n in sorted(st.errors.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {kind:<16} {n}")
    if st.missing:
        lines.append(f"  missing    {st.missing}  (recorded, image file gone; "
                     "run --redo-missing makes them again)")
    lines.append(f"  pending    {st.pending}")
    if st.superseded:
        # Those still in images/ and those prune moved, apart: after a prune, "prune moves them
        # aside" would send the user to a command that says "nothing superseded".
        kept = st.superseded - st.superseded_moved
        where = []
        if kept:
            where.append(f"{kept} in images/: batchgen prune {st.run_dir} moves them aside")
        if st.superseded_moved:
            where.append(f"{st.superseded_moved} moved to {st.run_dir / SUPERSEDED_DIR}/ by prune")
        lines.append(f"  superseded {st.superseded}  (images of edited or removed rows, not "
                     f"counted above; {'; '.join(where)})")
    if st.review is not None:
        r = st.review
        lines.append(f"  reviewed   {r['accepted']} accepted, {r['rejected']} rejected, "
                     f"{r['unreviewed']} unreviewed")
    if st.redos:
        lines.append(f"  redone     {plural(st.redone_jobs, 'job')} ({plural(st.redos, 'redo')})")
    if st.chains is not None:
        c = st.chains
        lines.append(f"  chained    {c.chained}  ({c.superseded} superseded: made from a parent "
                     f"image that changed, the next run makes them again; {c.parent_failed} "
                     "failed with their parent)")
    lines.append(f"  spent      ${st.cost_usd:.2f}")
    if st.lost_requests:
        lines.append(
            f"  lost       ${st.lost_usd:.2f} for {plural(st.lost_requests, 'request')} a "
            "killed run sent and never heard back from; their jobs were run again since, and "
            "the service bills what it finished, so they count as spent (and in --budget)"
        )
    if st.unsettled_requests:
        lines.append(
            f"  reserved   ${st.unsettled_usd:.2f} for {st.unsettled_requests} request(s) sent "
            "whose outcome is not in the ledger (in flight now, or when a run was killed): "
            "they may have been billed, so --budget counts them; this clears when their "
            "answer is recorded or their jobs are run again (then they count as lost)"
        )
    return "\n".join(lines)
