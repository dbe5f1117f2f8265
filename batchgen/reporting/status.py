"""Reading a run folder's counts and spend back: ``batchgen status`` (and the top of ``batchgen
report`` and of the gallery).

Reads ``DIR/run.json`` and ``DIR/ledger.jsonl`` alone: no manifest, no key. Kept apart from the
report and the planner so that ``status`` imports little and starts fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..folder.chains import ChainCounts, read_chain_counts
from ..folder.current import current_ids
from ..folder.intents import Unsettled, read_unsettled
from ..folder.layout import IMAGES_DIR, SUPERSEDED_DIR, count_images
from ..folder.ledger import (
    JOB_ID_FORM,
    LEDGER_NAME,
    BadAmount,
    JobStatus,
    LedgerRecord,
    amount,
    bad_amount,
    check_job_id,
    iter_ledger,
    loads_nonfinite,
    warn_bad_line,
)
from ..folder.liveness import describe_state
from ..folder.reviews import Review, Verdict, read_reviews
from ..folder.runfolder import read_meta
from ..folder.verdicts import has_reviews, verdicts
from ..words import plural

_SUCCEEDED, _FAILED = JobStatus.SUCCEEDED.value, JobStatus.FAILED.value
_IN_IMAGES = IMAGES_DIR + "/"


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
    # Only the reviewed jobs' images are looked at: a million shas would be ~150 MB.
    reviewed = {r.job_id for r in read_reviews(run_dir)} if has_reviews(run_dir) else set()
    scan = _scan_ledger(run_dir / LEDGER_NAME, reviewed, unsettled.settle if unsettled else None)
    latest, outputs, shas, redos, cost = (
        scan.latest, scan.outputs, scan.shas, scan.redos, scan.cost)
    succeeded = missing = superseded = 0
    old: list[list[str] | tuple[str, ...]] = []  # the superseded jobs' outputs
    counted = 0
    errors: dict[str, int] = {}
    # One listing of images/ says whether any image can be missing (fewer files than succeeded
    # jobs) instead of a stat per job; with no image file at all (a folder copied without
    # images/, or all deleted) every image recorded in images/ is gone, known without a stat.
    n_images = count_images(run_dir / IMAGES_DIR) if outputs else 0
    check = n_images < len(outputs)
    none_left = n_images == 0
    root = str(run_dir)
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
            if check and _gone(root, outputs.get(job_id, ()), none_left):
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
    if scan.chained:  # a second read, only for a folder with chains
        st.chains = read_chain_counts(run_dir, current)
    return st


def set_unsettled(st: Status, unsettled: Unsettled) -> None:
    """The intents no ledger line settles, split: still reserved, or lost (their job ran
    again since)."""
    lost = unsettled.lost()
    st.lost_requests = len(lost)
    st.lost_usd = sum(i.usd for i in lost)
    st.unsettled_requests = unsettled.count - st.lost_requests
    st.unsettled_usd = max(unsettled.usd - st.lost_usd, 0.0)


@dataclass(slots=True)
class _Scan:
    # job id -> True if its last record succeeded, else its error kind (None: no error given)
    latest: dict[str, bool | str | None] = field(default_factory=dict)
    outputs: dict[str, list[str] | tuple[str, ...]] = field(default_factory=dict)
    shas: dict[str, str] = field(default_factory=dict)
    redos: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0
    chained: bool = False  # a line names parents: the folder has chains


def _scan_ledger(path: Path, reviewed: set[str],
                 settle: Callable[[str, str], None] | None) -> _Scan:
    """The ledger's lines read for the few fields ``status`` counts with, in one flat loop.

    The lines kept and skipped are :func:`~batchgen.folder.ledger.iter_records`'s (blank lines
    quietly, torn or garbled ones with a warning, an unsafe job id or a bad amount refused
    naming the line); building a full record per line was most of the time at a million lines.
    """
    scan = _Scan()
    latest, outputs, shas, redos = scan.latest, scan.outputs, scan.shas, scan.redos
    cost = 0.0
    chained = False
    loads = orjson.loads
    is_job_id = JOB_ID_FORM.fullmatch
    try:
        fh = path.open("rb", buffering=1 << 16)
    except FileNotFoundError:
        return scan
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                try:
                    d = loads(raw)
                except ValueError:
                    d = loads_nonfinite(raw)
                job_id = d["job_id"]  # TypeError for JSON that is not an object
                if type(job_id) is not str or not is_job_id(job_id):
                    check_job_id(path, lineno, job_id)  # InputError unless the id is safe
                status = d["status"]
                if status == _SUCCEEDED:
                    ok = True
                elif status == _FAILED:
                    ok = False
                else:
                    raise ValueError(status)
                usd = d.get("cost_usd")
                if usd is not None:
                    cost += amount(usd)
                err = d.get("error")
                outs = d.get("outputs") or ()
                if type(outs) is not list:
                    outs = tuple(outs)
            except BadAmount as exc:
                raise bad_amount(path, lineno, exc) from None
            except (ValueError, KeyError, TypeError, AttributeError):
                if raw.strip():
                    warn_bad_line(path, lineno, raw)
                continue
            if ok:
                latest[job_id] = True
                outputs[job_id] = outs
                if reviewed and job_id in reviewed:
                    sha = d.get("sha256")
                    if sha:
                        shas[job_id] = sha
                if d.get("replaces"):
                    redos[job_id] = redos.get(job_id, 0) + 1
            else:
                latest[job_id] = err.get("kind") if type(err) is dict else None
                if reviewed and job_id in reviewed:
                    shas.pop(job_id, None)
            if not chained and d.get("parents"):
                chained = True
            if settle is not None:
                settle(job_id, str(d.get("started_at", "")))
    scan.cost, scan.chained = cost, chained
    return scan


def _some_missing(run_dir: Path, succeeded: int) -> bool:
    """Whether any image can be missing: fewer image files than succeeded jobs (one listing,
    instead of a stat per job for a folder that is whole)."""
    return succeeded > 0 and count_images(run_dir / IMAGES_DIR) < succeeded


def _is_missing(run_dir: Path, outputs: tuple[str, ...]) -> bool:
    return any(not (run_dir / out).exists() for out in outputs)


def _gone(root: str, outputs: Iterable[str], none_left: bool) -> bool:
    """Whether one of a job's images is gone (``root``: the run folder; an absolute output is
    looked for where it points, as pathlib would)."""
    for out in outputs:
        if none_left and out.startswith(_IN_IMAGES) and ".." not in out:
            return True
        if not os.path.exists(os.path.join(root, out)):
            return True
    return False


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


def moved_aside(run_dir: Path, outputs: Iterable[Sequence[str]]) -> int:
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
