"""Superseded jobs: ``batchgen prune`` moves their images aside, and planning puts them back.

A job is *current* when the manifest held it at the last planning (``DIR/jobs.jsonl``, see
:mod:`batchgen.folder.current`); a succeeded job that is not current is *superseded*: its row was
edited or removed. Its image stays until ``prune`` moves it to ``DIR/superseded/`` (same
relative path), and moves back into place if an edit is undone and the job is current again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, StorageError
from ..words import plural
from .current import current_ids, iter_current
from .layout import SUPERSEDED_DIR
from .ledger import LEDGER_NAME, LedgerRecord, iter_ledger
from .runfolder import RunFolder, read_meta


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


def prune_folder(
    run_dir: Path,
    *,
    yes: bool,
    interactive: bool,
    confirm: Callable[[str], bool],
    say: Callable[[str], None],
    note: Callable[[str], None],
) -> None:
    """``batchgen prune``: under the folder's lock (never under a run that is writing images),
    find the superseded images, ask (or require ``--yes`` without a terminal), move them.

    ``confirm`` asks the user; ``say`` reports the outcome, ``note`` a side remark (the CLI
    sends them to stdout and stderr)."""

    read_meta(run_dir)  # InputError when this is no run folder
    lock = RunFolder(run_dir).lock()
    try:
        found = find_superseded(run_dir)
        if not found.jobs:
            say(f"{run_dir}: nothing superseded; every image belongs to a current job")
            return
        jobs = plural(len(found.jobs), "superseded job")
        what = (f"{jobs} ({len(found.files)} files, {found.bytes / 1e6:.1f} MB) "
                f"to {run_dir / SUPERSEDED_DIR}")
        if not yes:
            if not interactive:
                raise InputError(f"would move {what}; add --yes to do it without a terminal")
            if not confirm(f"Move {what}?"):
                note("nothing moved")
                return
        moved = move_aside(run_dir, found)
        say(f"moved {plural(moved, 'file')} of {jobs} to {run_dir / SUPERSEDED_DIR}; "
                   "the ledger keeps their records")
    finally:
        os.close(lock)
