"""Current and superseded jobs: the resume line, ``batchgen prune``, and putting images back.

A job is *current* when the manifest held it at the last planning (``DIR/jobs.jsonl``, see
:mod:`batchgen.current`); a succeeded job that is not current is *superseded*: its row was
edited or removed. Its image stays until ``prune`` moves it to ``DIR/superseded/`` (same
relative path), and moves back into place if an edit is undone and the job is current again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .current import CurrentWriter, current_ids, iter_current
from .errors import InputError, StorageError
from .ledger import LEDGER_NAME, LedgerRecord, iter_ledger
from .plan import RETRYABLE, SUCCEEDED, Plan
from .spec import JobSpec

SUPERSEDED_DIR = "superseded"


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
        self._fast = previous is None and plan.selection.only is None
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
        shard, only, retry = sel.shard, sel.only, sel.retry_failed
        in_scope, picked = sel.in_scope, sel.picked
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
                if in_scope(job.job_id):
                    add(job)

            return record_shard

        def visit(job: JobSpec) -> None:
            count_job(job)
            job_id = job.job_id
            if shard is not None and not in_scope(job_id):
                return
            add(job)
            state = states.get(job_id)
            if state == SUCCEEDED:
                return
            if state is None:
                if previous is not None and job_id in previous:
                    self.untouched += 1
            elif state != RETRYABLE and (retry is None or (retry and state not in retry)):
                return  # a permanent failure this run leaves alone
            self._open += 1
            if only is None or picked(job_id):
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


# -- prune ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Superseded:
    """Succeeded jobs the manifest no longer holds: their files, relative to the run folder."""

    jobs: tuple[str, ...]
    files: tuple[str, ...]
    bytes: int


def _files_of(rec: LedgerRecord) -> list[str]:
    files = list(rec.outputs)
    if rec.outputs:
        # The sidecar sits next to the first output: images/<id>.json
        first = rec.outputs[0]
        files.append(str(Path(first).with_name(f"{rec.job_id}.json")))
    return files


def find_superseded(run_dir: Path) -> Superseded:
    current = current_ids(run_dir)
    if current is None:
        raise InputError(
            f"{run_dir}: no record of the manifest's current jobs ({run_dir}/jobs.jsonl); "
            "run the manifest once with this batchgen to write it"
        )
    latest: dict[str, LedgerRecord] = {}
    for rec in iter_ledger(run_dir / LEDGER_NAME):
        if rec.job_id in current:
            latest.pop(rec.job_id, None)
        else:
            latest[rec.job_id] = rec
    jobs: list[str] = []
    files: list[str] = []
    size = 0
    root = os.path.realpath(run_dir)
    for job_id, rec in latest.items():
        if not rec.succeeded:
            continue
        found = False
        for rel in _files_of(rec):
            path = os.path.normpath(os.path.join(root, rel))
            if not path.startswith(os.path.join(root, "")) or not os.path.isfile(path):
                continue  # a ledger is data: nothing outside the folder is ever moved
            found = True
            files.append(os.path.relpath(path, root))
            size += os.path.getsize(path)
        if found:
            jobs.append(job_id)
    return Superseded(tuple(jobs), tuple(files), size)


def move_aside(run_dir: Path, found: Superseded) -> int:
    """Move the superseded files to ``DIR/superseded/<same path>``; returns files moved."""
    moved = 0
    for rel in found.files:
        src = run_dir / rel
        dst = run_dir / SUPERSEDED_DIR / rel
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StorageError(f"cannot move {src} to {dst}: {exc.strerror}") from exc
        moved += 1
    return moved


def restore_superseded(run_dir: Path) -> list[str]:
    """Files moved aside by ``prune`` whose job is current again (an edit undone) go back;
    returns the ids of those jobs."""
    aside = run_dir / SUPERSEDED_DIR
    if not aside.is_dir():
        return []
    by_stem: dict[str, list[Path]] = {}
    for path in aside.rglob("*"):
        if path.is_file():
            by_stem.setdefault(path.stem, []).append(path)
    if not by_stem:
        return []
    restored: list[str] = []
    for d in iter_current(run_dir):
        job_id = str(d["job_id"])
        for path in by_stem.get(job_id, ()):
            dst = run_dir / path.relative_to(aside)
            with contextlib.suppress(OSError):
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dst)
                if not restored or restored[-1] != job_id:
                    restored.append(job_id)
    return restored


def prune_folder(run_dir: Path, *, yes: bool, interactive: bool) -> None:
    """``batchgen prune``: under the folder's lock (never under a run that is writing images),
    find the superseded images, ask (or require ``--yes`` without a terminal), move them."""
    import click

    from .plan import RunFolder
    from .status import read_meta
    from .words import plural

    read_meta(run_dir)  # InputError when this is no run folder
    lock = RunFolder(run_dir).lock()
    try:
        found = find_superseded(run_dir)
        if not found.jobs:
            click.echo(f"{run_dir}: nothing superseded; every image belongs to a current job")
            return
        jobs = plural(len(found.jobs), "superseded job")
        what = (f"{jobs} ({len(found.files)} files, {found.bytes / 1e6:.1f} MB) "
                f"to {run_dir / SUPERSEDED_DIR}")
        if not yes:
            if not interactive:
                raise InputError(f"would move {what}; add --yes to do it without a terminal")
            if not click.confirm(f"Move {what}?"):
                click.echo("nothing moved", err=True)
                return
        moved = move_aside(run_dir, found)
        click.echo(f"moved {plural(moved, 'file')} of {jobs} to {run_dir / SUPERSEDED_DIR}; "
                   "the ledger keeps their records")
    finally:
        os.close(lock)
