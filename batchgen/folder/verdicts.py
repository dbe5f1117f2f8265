"""The verdicts of a run folder's current images, and rejected images kept aside.

:mod:`.reviews` holds what people decided about which image (by sha256); this module joins it
to the ledger, whose last line per job names the job's image now. A job redone by
``run --redo-rejected`` has its rejected image and sidecar moved to
``DIR/rejected/<xx>/<job id>.<sha256[:16]>.<ext>`` (never deleted: it was paid for, and it is
the record of what was wrong), just before the redo's first ledger line is written, so the new
image can take its place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, StorageError
from .durable import fsync_dir, why
from .layout import subdir
from .ledger import LEDGER_NAME, LedgerRecord, iter_ledger
from .reviews import (
    REVIEWS_FILE,
    Review,
    Verdict,
    append_reviews,
    current_verdicts,
    read_reviews,
)

log = logging.getLogger(__name__)

REJECTED_DIR = "rejected"


def has_reviews(run_dir: Path) -> bool:
    return (run_dir / REVIEWS_FILE).exists()


def ledger_images(ledger: Path, ids: set[str] | None = None
                  ) -> dict[str, tuple[str, tuple[str, ...]]]:
    """job id -> (sha256, outputs) of its image now: the last ledger line, if it succeeded.
    Only the jobs in ``ids`` when given."""
    images: dict[str, tuple[str, tuple[str, ...]]] = {}
    for rec in iter_ledger(ledger):
        if ids is not None and rec.job_id not in ids:
            continue
        if rec.succeeded and rec.sha256:
            images[rec.job_id] = (rec.sha256, rec.outputs)
        else:
            images.pop(rec.job_id, None)
    return images


def verdicts(run_dir: Path, current_sha: dict[str, str] | None = None) -> dict[str, Review]:
    """job id -> the verdict on its image now (accepted or rejected; unreviewed jobs left out).

    ``current_sha`` (job id -> sha256 of its image) when the caller has read the ledger already;
    else the ledger is read for the reviewed jobs alone."""
    if not has_reviews(run_dir):
        return {}
    if current_sha is None:
        reviewed = {r.job_id for r in read_reviews(run_dir)}
        images = ledger_images(run_dir / LEDGER_NAME, reviewed)
        current_sha = {job_id: sha for job_id, (sha, _) in images.items()}
    return current_verdicts(run_dir, current_sha)


@dataclass(frozen=True, slots=True)
class Redo:
    """A job whose image now is rejected: the image to keep aside, and why it was rejected."""

    job_id: str
    sha256: str
    outputs: tuple[str, ...]
    note: str


def rejected_jobs(run_dir: Path) -> dict[str, Redo]:
    """The jobs ``--redo-rejected`` sends: those whose image now has the verdict rejected, and
    those whose last redo ended in a retryable failure (a stop, a kill, attempts run out: their
    rejected image is already aside, the redo is not done yet)."""
    if not has_reviews(run_dir):
        return {}
    reviews = list(read_reviews(run_dir))
    reviewed = {r.job_id for r in reviews}
    last: dict[str, LedgerRecord] = {}
    for rec in iter_ledger(run_dir / LEDGER_NAME):
        if rec.job_id in reviewed or rec.replaces or rec.job_id in last:
            last[rec.job_id] = rec
    current = {k: r.sha256 for k, r in last.items() if r.succeeded and r.sha256}
    found = current_verdicts(run_dir, current)
    redos = {
        job_id: Redo(job_id, review.sha256, last[job_id].outputs, review.note)
        for job_id, review in found.items() if review.verdict is Verdict.REJECTED
    }
    for job_id, rec in last.items():
        if not rec.succeeded and rec.replaces and rec.error is not None and rec.error.retryable:
            redos[job_id] = Redo(job_id, rec.replaces, (), rec.note)
    return redos


def aside_path(run_dir: Path, job_id: str, sha256: str, name: str) -> Path:
    """Where a rejected file goes: its own name with the image's sha256 in it (a job rejected
    twice keeps both images)."""
    stem, ext = os.path.splitext(name)
    return run_dir / REJECTED_DIR / subdir(job_id) / f"{stem}.{sha256[:16]}{ext}"


def set_aside(run_dir: Path, redo: Redo) -> list[Path]:
    """Move the rejected image and its sidecar to ``rejected/``; what was moved. Done once: a
    file already gone (moved by an earlier, interrupted redo) is skipped."""
    moved: list[Path] = []
    images = [run_dir / out for out in redo.outputs]
    # An image there that is not the rejected one is the redo's own, saved by a run cut short
    # before its ledger line: it stays (the redo saves the same bytes over it).
    try:
        if any(p.is_file() and _sha256_of(p) != redo.sha256 for p in images):
            return moved
    except OSError as exc:
        raise StorageError(f"cannot read the rejected image of {redo.job_id}: {why(exc)}") from exc
    sources = images + [p.with_suffix(".json") for p in images]
    for src in sources:
        if not src.is_file():
            continue
        dest = aside_path(run_dir, redo.job_id, redo.sha256, src.name)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():  # the same image set aside before: keep that copy too
                dest = dest.with_name(f"{dest.stem}.{os.getpid()}{dest.suffix}")
            os.replace(src, dest)
        except OSError as exc:
            raise StorageError(f"cannot move {src} to {dest}: {why(exc)}") from exc
        moved.append(dest)
    if moved:
        for folder in {p.parent for p in moved} | {s.parent for s in sources}:
            fsync_dir(folder)
        log.info("%s: rejected image kept in %s", redo.job_id, moved[0].parent)
    return moved


def _sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Redos:
    """The jobs one ``--redo-rejected`` run sends again. Before a job's first ledger line (its
    new image saved, or a failure recorded) its rejected image is set aside; every line of it
    carries ``replaces`` (the rejected sha256) and the rejection's note."""

    def __init__(self, run_dir: Path, jobs: dict[str, Redo]) -> None:
        self.run_dir = run_dir
        self.jobs = jobs
        self._aside: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def before_line(self, job_id: str) -> dict[str, str]:
        """The fields a ledger line of ``job_id`` adds ({} for a job that is no redo); the
        rejected image is moved aside first (StorageError if it cannot be)."""
        redo = self.jobs.get(job_id)
        if redo is None:
            return {}
        if job_id not in self._aside:
            set_aside(self.run_dir, redo)
            self._aside.add(job_id)
        return {"replaces": redo.sha256, "note": redo.note}


def mark(run_dir: Path, patterns: Iterable[str], verdict: Verdict, note: str = ""
         ) -> list[Review]:
    """Give ``verdict`` to the current image of each job a pattern names (a job id or a glob,
    as ``--only`` takes); the reviews written. A pattern that names no job with an image is an
    InputError, and then nothing is written."""
    import fnmatch
    import time

    images = ledger_images(run_dir / LEDGER_NAME)
    chosen: dict[str, str] = {}
    unknown: list[str] = []
    for pattern in patterns:
        if pattern in images:
            hits = [pattern]
        elif any(ch in pattern for ch in "*?["):
            hits = [job_id for job_id in images if fnmatch.fnmatchcase(job_id, pattern)]
        else:
            hits = []
        if not hits:
            unknown.append(pattern)
        for job_id in hits:
            chosen[job_id] = images[job_id][0]
    if unknown:
        names = ", ".join(repr(p) for p in unknown)
        raise InputError(f"{run_dir}: no job with an image matches {names} (see batchgen status "
                         f"{run_dir}; a job id or a glob such as 'cat-*')")
    at = time.time()
    reviews = [Review(job_id=job_id, sha256=sha, verdict=verdict, note=note, at=at)
               for job_id, sha in sorted(chosen.items())]
    append_reviews(run_dir, reviews)
    return reviews
