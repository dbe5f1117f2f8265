"""``batchgen merge``: the run folders of several shards (or machines) into one.

Every input line is kept, so the merged spend and attempts stay true, but each job's winning
record is written last, which is the one every reader trusts: within one input its last line;
across inputs a success beats any failure, then the later ``finished_at``. Images (and sidecars)
are hard-linked when the filesystem allows, else copied, and are in place before the ledger that
names them: the same rule the store keeps.

The merged folder's own ledger is one more input: lines a run wrote there after an earlier merge
are kept, and merging again is idempotent (a line reached twice is written once). The merge holds
the merged folder's lock, and a shared lock on each input, so no run writes to either meanwhile.
``run.json`` names the inputs before the ledger is replaced, so a merge killed (or out of disk)
between the two is simply run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError, StorageError
from ..words import plural
from .batches import Journal
from .current import merge_current
from .durable import commit_tmp
from .intents import INTENTS_NAME, Intent, read_unsettled
from .layout import JOURNAL_NAME, LOCK_FILE, now_iso
from .ledger import LEDGER_NAME, LedgerRecord, iter_records
from .runfolder import RunFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MergeResult:
    out: Path
    inputs: int
    jobs: int  # the shards' jobs added up (run.json)
    recorded: int  # jobs with a record in the merged ledger
    succeeded: int
    failed: int
    lines: int
    linked: int
    copied: int
    kept: int
    missing: int


@dataclass(frozen=True, slots=True, order=True)
class _Rank:
    """Orders candidate records for one job: the largest wins."""

    succeeded: bool
    finished_at: str
    source: int
    line: int


_Key = tuple[str, str, str, int, float]


def _key(rec: LedgerRecord) -> _Key:
    return (rec.job_id, rec.status.value, rec.finished_at, rec.attempts, rec.cost_usd)


def _check(inputs: list[Path], out: Path) -> list[Path]:
    if not inputs:
        raise InputError("merge: name at least one run folder")
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in inputs:
        folder = RunFolder(path)
        if not folder.ledger_path.is_file() and not folder.run_file.is_file():
            raise InputError(f"{path}: not a batchgen run folder (no run.json or ledger.jsonl)")
        _refuse_open_batches(path)
        real = path.resolve()
        if real in seen:
            log.warning("%s is named twice; merged once", path)
            continue
        seen.add(real)
        unique.append(path)
    if out.resolve() in seen:
        raise InputError(f"--out {out} is one of the inputs: merge into a new folder")
    target = RunFolder(out)
    if target.ledger_path.exists() and "merged_from" not in target.read_meta():
        raise InputError(
            f"--out {out} already holds a run of its own: name it as an input and merge "
            "into a new folder"
        )
    return unique


def _refuse_open_batches(path: Path) -> None:
    """A folder whose batches may still deliver is not merged (docs/design/run-folder.md, "merge").

    The journal is the folder's own: its batches' display names carry its id, and collecting,
    expiry and resubmission are judged from it. Carried into a merged folder, two folders would
    each own the batch, and once it expired both would send its jobs again: paid twice. Left
    behind, the merged folder would read the jobs as pending and buy them live while the batch
    delivered them too (issue 19: 4 of 4 paid twice)."""
    if not (path / JOURNAL_NAME).is_file():
        return
    pending = Journal(path).open_records()
    if not pending:
        return
    names = ", ".join(r.name or r.display_name for r in pending[:3])
    more = f" and {len(pending) - 3} more" if len(pending) > 3 else ""
    jobs = sum(r.jobs for r in pending)
    raise InputError(
        f"{path}: {plural(len(pending), 'batch', 'batches')} of {plural(jobs, 'job')} may still "
        f"deliver ({names}{more}); merged now, those jobs would read as pending and be paid "
        f"for again: collect them first (re-run its `run --mode batch`, or `batchgen cancel "
        f"{path}`), then merge"
    )


def _inside(root: Path, rel: str) -> Path | None:
    path = (root / rel).resolve()
    return path if path.is_relative_to(root.resolve()) else None


def _place(src: Path, dst: Path) -> str:
    """Put ``src`` at ``dst``: "kept" if it is there already, else "linked" or "copied"."""
    try:
        if dst.exists() and (os.path.samefile(src, dst)
                             or dst.stat().st_size == src.stat().st_size):
            return "kept"
    except OSError:
        pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        how = "linked"
    except OSError:
        # Another filesystem, or one without hard links: copy, durably.
        shutil.copyfile(src, tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        how = "copied"
    os.replace(tmp, dst)
    return how


def _sum_jobs(metas: list[dict[str, Any]], recorded: list[int], union: int) -> int:
    """The jobs the inputs cover together, from their run.json.

    Shards of one manifest add up; a folder run without ``--shard`` already covers its whole
    manifest, so a further folder of that manifest (a retry, an ``--only`` run) adds nothing.
    """
    # manifest -> shard (None: the whole manifest) -> jobs
    scopes: dict[str, dict[str, int]] = {}
    for i, (meta, seen) in enumerate(zip(metas, recorded, strict=True)):
        try:
            jobs = max(int(meta.get("jobs") or 0), seen)
        except (TypeError, ValueError):
            jobs = seen
        manifest = str(meta.get("manifest_sha256") or f"unknown-{i}")
        shard = (meta.get("settings") or {}).get("shard")
        key = "all" if not shard else "/".join(map(str, shard))
        by_shard = scopes.setdefault(manifest, {})
        by_shard[key] = max(by_shard.get(key, 0), jobs)
    total = sum(s["all"] if "all" in s else sum(s.values()) for s in scopes.values())
    return max(total, union)


def _common(metas: list[dict[str, Any]], key: str) -> Any:
    values = {orjson.dumps(m.get(key)) for m in metas}
    return metas[0].get(key) if len(values) == 1 else None


@contextlib.contextmanager
def _locked(sources: list[Path], out: Path) -> Iterator[None]:
    """The merged folder's lock, and a shared lock on every input that a run has used."""
    fds = [RunFolder(out).lock()]
    try:
        for src in sources:
            try:
                fd = os.open(src / LOCK_FILE, os.O_RDONLY)
            except OSError:
                continue  # never locked by a run: no run is writing there
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(
                    f"{src}: a batchgen run is using this folder; merge it once the run has ended"
                ) from None
        yield
    finally:
        for fd in fds:
            os.close(fd)


def merge(inputs: list[Path], out: Path) -> MergeResult:
    sources = _check(inputs, out)
    with _locked(sources, out):
        return _merge(sources, out)


def _merge(sources: list[Path], out: Path) -> MergeResult:
    folder = RunFolder(out)
    own_meta = folder.read_meta()
    metas = [RunFolder(s).read_meta() for s in sources]
    # The merged folder's own lines (an earlier merge, and runs made there since) are an input.
    readers = [*sources, out] if folder.ledger_path.is_file() else list(sources)
    # run.json names the inputs before the ledger is replaced: a merge cut short is re-runnable.
    folder.write_meta({**own_meta, "merged_from": [str(s) for s in sources],
                       "state": "merging", "updated_at": now_iso()})
    # Pass 1: which line of which input is each job's winner.
    best: dict[str, tuple[_Rank, _Key]] = {}
    per_source_jobs: list[int] = []
    for i, src in enumerate(readers):
        last: dict[str, tuple[_Rank, _Key]] = {}
        for lineno, _, rec in iter_records(src / LEDGER_NAME):
            last[rec.job_id] = (_Rank(rec.succeeded, rec.finished_at, i, lineno), _key(rec))
        per_source_jobs.append(len(last))
        for job_id, cand in last.items():
            if job_id not in best or cand[0] > best[job_id][0]:
                best[job_id] = cand
    winners = {(rank.source, rank.line) for rank, _ in best.values()}
    # The same line reached through two inputs (a folder merged again with its own sources)
    # was paid for once, so it is written once.
    seen_lines: set[_Key] = {key for _, key in best.values()}

    # Pass 2: place the winners' images, then write history lines and winning lines apart.
    images_dir = out / "images"
    tmp_history = out / (LEDGER_NAME + ".merge.tmp")
    tmp_winners = out / (LEDGER_NAME + ".winners.tmp")
    placed = {"linked": 0, "copied": 0, "kept": 0}
    missing = succeeded = failed = lines = 0
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
        with tmp_history.open("wb") as history, tmp_winners.open("wb") as winning:
            for i, src in enumerate(readers):
                for lineno, raw, rec in iter_records(src / LEDGER_NAME):
                    if (i, lineno) not in winners:
                        key = _key(rec)
                        if key not in seen_lines:
                            seen_lines.add(key)
                            history.write(raw.rstrip(b"\r\n") + b"\n")
                            lines += 1
                        continue
                    if rec.succeeded:
                        files = _files_of(src, out, rec)
                        if files is None:
                            # The line stays (it was paid for); the image is reported missing.
                            missing += 1
                            log.warning("%s: %s: image missing; run --redo-missing makes it",
                                        src, rec.job_id)
                        else:
                            for a, b in files:
                                placed[_place(a, b)] += 1
                            succeeded += 1
                    else:
                        failed += 1
                    winning.write(raw.rstrip(b"\r\n") + b"\n")
                    lines += 1
            winning.close()
            with tmp_winners.open("rb") as fh:
                shutil.copyfileobj(fh, history)
            commit_tmp(history, tmp_history, folder.ledger_path)
        _merge_intents(readers, out)
        _merge_reviews(readers, out)
    except OSError as exc:
        raise StorageError(f"cannot merge into {out}: {exc}") from exc
    finally:
        tmp_winners.unlink(missing_ok=True)
        tmp_history.unlink(missing_ok=True)

    merge_current(readers, out)  # the jobs each input's manifest held, with their metadata
    jobs = _sum_jobs(metas, per_source_jobs[: len(sources)], len(best))
    if own_meta.get("state") not in (None, "merging"):
        # Runs made in the merged folder may know of jobs (a grown manifest) the inputs do not.
        with contextlib.suppress(TypeError, ValueError):
            jobs = max(jobs, int(own_meta.get("jobs") or 0))
    folder.write_meta({
        **{k: _common(metas, k) for k in ("manifest", "manifest_sha256", "model", "provider")},
        "jobs": jobs,
        "state": "merged",
        "merged_from": [str(s) for s in sources],
        "shards": [(m.get("settings") or {}).get("shard") for m in metas],
        "updated_at": now_iso(),
    })
    return MergeResult(
        out=out,
        inputs=len(sources),
        jobs=jobs,
        recorded=succeeded + failed,
        succeeded=succeeded,
        failed=failed,
        lines=lines,
        linked=placed["linked"],
        copied=placed["copied"],
        kept=placed["kept"],
        missing=missing,
    )


def _merge_intents(readers: list[Path], out: Path) -> None:
    """Carry the inputs' unsettled intents over: requests that may have been billed stay
    counted in the merged folder (its ledger, which has every line, settles the rest)."""
    found: dict[str, Intent] = {}
    for src in readers:
        for intent in read_unsettled(src):
            found.setdefault(intent.iid, intent)
    path = out / INTENTS_NAME
    if not found and not path.exists():
        return
    tmp = path.with_name(INTENTS_NAME + ".merge.tmp")
    # Not atomic_write: an OS error here is the merge's, worded by merge() like the others.
    with tmp.open("wb") as fh:
        for intent in found.values():
            fh.write(intent.to_line())
        commit_tmp(fh, tmp, path)


def _merge_reviews(readers: list[Path], out: Path) -> None:
    """Every input's verdicts (each about one image, so they stay true in the merged folder) in
    the order they were given, and the rejected images kept aside."""
    from .reviews import REVIEWS_FILE, read_reviews
    from .verdicts import REJECTED_DIR

    found: dict[bytes, float] = {}
    for src in readers:
        for review in read_reviews(src):
            found.setdefault(review.to_line(), review.at)
        aside = src / REJECTED_DIR
        if src != out and aside.is_dir():
            for path in aside.rglob("*"):
                if path.is_file():
                    target = out / REJECTED_DIR / path.relative_to(aside)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _place(path, target)
    if not found:
        return
    path = out / REVIEWS_FILE
    tmp = path.with_name(REVIEWS_FILE + ".merge.tmp")
    with tmp.open("wb") as fh:
        for line in sorted(found, key=found.__getitem__):  # stable: ties keep their order
            fh.write(line)
        commit_tmp(fh, tmp, path)


def _files_of(src: Path, out: Path, rec: LedgerRecord) -> list[tuple[Path, Path]] | None:
    """(from, to) for every output and its sidecar; None if an output is not there to take."""
    pairs: list[tuple[Path, Path]] = []
    for rel in rec.outputs:
        image = _inside(src, rel)
        target = _inside(out, rel)
        if image is None or target is None or not image.is_file():
            return None
        pairs.append((image, target))
        sidecar = image.with_suffix(".json")
        if sidecar.is_file():
            pairs.append((sidecar, target.with_suffix(".json")))
    return pairs if pairs else None
