"""A run folder held in memory for the review page, kept up to date by reading only what changed.

``ledger.jsonl`` and ``reviews.jsonl`` are only ever appended to, so each :meth:`FolderIndex.
refresh` reads them from the byte offset where the last one stopped (a half-written last line
is left for the next refresh); ``jobs.jsonl`` is replaced whole by every run's planning, so it
is read again when its inode, size or mtime changes. A ledger that shrank or was replaced
(``merge``) is read again from the start. Per job the index keeps what the filters and the grid
need (status, error kind, verdict, vars, meta, the image's path and sha256) and the offsets of
its ledger lines; the large view reads those lines back (:meth:`FolderIndex.history`) rather
than the index holding every prompt's history.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError
from ..folder.current import CURRENT_NAME
from ..folder.layout import read_run_meta
from ..folder.ledger import LEDGER_NAME, BadAmount, JobStatus, amount
from ..folder.liveness import describe_state
from ..folder.reviews import REVIEWS_FILE, Review, Verdict
from ..spec import job_id_problem

log = logging.getLogger(__name__)

# One read of a growing file at most this much: a first look at a 1 GB ledger is many short
# reads, each parsed and applied, not one buffer of the whole file.
_CHUNK = 8 << 20


class Status:
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PENDING = "pending"
    SUPERSEDED = "superseded"  # in the ledger, no longer in the manifest (jobs.jsonl)


@dataclass(slots=True)
class JobRow:
    """One job as the page filters and shows it. Mutable: refreshes update it in place."""

    job_id: str
    order: int  # manifest position; jobs only in the ledger come after, in ledger order
    status: str = Status.PENDING
    kind: str = ""  # the last failure's error kind
    sha256: str = ""
    output: str = ""  # the image's path relative to the run folder, as the ledger names it
    prompt: str = ""
    name: str | None = None
    vars: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    cost_usd: float = 0.0  # over every ledger line of the job (redos and failures included)
    lines: list[int] = field(default_factory=list)  # byte offsets of its ledger lines
    current: bool = True  # in jobs.jsonl (or no jobs.jsonl at all)
    in_ledger: bool = False
    # A chained job's parents as its last ledger line names them: ({"job_id", "sha256"}, ...)
    parents: tuple[dict[str, str], ...] = ()


@dataclass(slots=True)
class _Tail:
    """Where the reading of one appended file stopped."""

    offset: int = 0
    inode: int = -1


def _intern_map(d: Any) -> dict[str, str]:
    if not isinstance(d, dict):
        return {}
    return {sys.intern(str(k)): sys.intern(str(v)) for k, v in d.items()}


def _parents(value: Any) -> tuple[dict[str, str], ...]:
    """A ledger line's ``parents`` (chains), keeping only entries that name a job."""
    if not isinstance(value, list):
        return ()
    return tuple(
        {"job_id": p["job_id"], "sha256": str(p.get("sha256") or "")}
        for p in value
        if isinstance(p, dict) and job_id_problem(p.get("job_id")) is None
    )


class FolderIndex:
    """Every job of one run folder, with the counts and spend, refreshed incrementally."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.rows: dict[str, JobRow] = {}
        self.ordered: list[JobRow] = []  # rows in page order; rebuilt when membership changes
        self.spend = 0.0
        self.version = 0  # bumped by every refresh that changed anything
        self.var_keys: list[str] = []
        self.meta_keys: list[str] = []
        self._ledger = _Tail()
        self._reviews = _Tail()
        self._jobs_stamp: tuple[int, int, int] | None = None
        # job id -> sha256 -> the latest review of that image
        self._reviews_of: dict[str, dict[str, Review]] = {}
        # parent job id -> the jobs made from one of its images (chains), for the large view
        self.children: dict[str, set[str]] = {}
        self._next_extra = 1 << 40  # order of ledger-only jobs, after every manifest position
        self._dirty_order = True

    # -- reading ------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Read what changed since the last call; whether anything did."""
        changed = self._read_jobs()
        changed |= self._read_ledger()
        changed |= self._read_reviews()
        if changed:
            self.version += 1
            if self._dirty_order:
                self.ordered = sorted(self.rows.values(), key=lambda r: r.order)
                self._keys()
                self._dirty_order = False
        return changed

    def _read_jobs(self) -> bool:
        path = self.run_dir / CURRENT_NAME
        try:
            st = path.stat()
        except FileNotFoundError:
            if self._jobs_stamp is None:
                return False
            self._jobs_stamp = None
            for row in self.rows.values():
                row.current = True
            return True
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._jobs_stamp:
            return False
        self._jobs_stamp = stamp
        seen: set[str] = set()
        with path.open("rb", buffering=1 << 16) as fh:
            for position, raw in enumerate(fh):
                try:
                    d = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # a torn line: the file is replaced whole, the next run fixes it
                if not isinstance(d, dict) or job_id_problem(d.get("job_id")) is not None:
                    continue
                job_id = d["job_id"]
                seen.add(job_id)
                found = self.rows.get(job_id)
                if found is None:
                    found = self.rows[job_id] = JobRow(job_id=job_id, order=position)
                    found.prompt = str(d.get("prompt") or "")
                row = found
                row.order = position
                row.current = True
                row.name = d.get("name")
                row.vars = _intern_map(d.get("vars"))
                meta = d.get("meta")
                row.meta = meta if isinstance(meta, dict) else {}
        for job_id in [k for k, r in self.rows.items() if k not in seen]:
            row = self.rows[job_id]
            if not row.in_ledger:
                del self.rows[job_id]  # pending in an older manifest only: gone
                continue
            row.current = False
            if row.order < self._next_extra:
                row.order = self._next_extra
                self._next_extra += 1
        for row in self.rows.values():
            self._set_status(row)
        self._dirty_order = True
        return True

    def _read_appended(self, name: str, tail: _Tail) -> tuple[list[tuple[int, bytes]], bool]:
        """The whole new lines of an appended file with their offsets, and whether it was
        replaced or cut (then read from the start, and the caller starts over)."""
        path = self.run_dir / name
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            reset = tail.offset > 0
            tail.offset, tail.inode = 0, -1
            return [], reset
        with fh:
            st = os.fstat(fh.fileno())
            reset = (st.st_ino != tail.inode and tail.inode != -1) or st.st_size < tail.offset
            if reset:
                tail.offset = 0
            tail.inode = st.st_ino
            if st.st_size == tail.offset:
                return [], reset
            fh.seek(tail.offset)
            data = fh.read(min(st.st_size - tail.offset, _CHUNK))
        end = data.rfind(b"\n")
        if end < 0:
            return [], reset
        lines: list[tuple[int, bytes]] = []
        start = 0
        base = tail.offset
        while start <= end:
            stop = data.index(b"\n", start)
            if stop > start:
                lines.append((base + start, data[start:stop]))
            start = stop + 1
        tail.offset = base + end + 1
        return lines, reset

    def _read_ledger(self) -> bool:
        changed = False
        while True:
            lines, reset = self._read_appended(LEDGER_NAME, self._ledger)
            if reset:
                self._forget_ledger()
                changed = True
            for offset, raw in lines:
                self._apply_ledger_line(offset, raw)
            changed |= bool(lines)
            if not lines:
                return changed

    def _forget_ledger(self) -> None:
        self.spend = 0.0
        self.children.clear()
        for job_id in list(self.rows):
            row = self.rows[job_id]
            row.lines.clear()
            row.cost_usd, row.in_ledger, row.sha256, row.output, row.kind = 0.0, False, "", "", ""
            if not row.current or self._jobs_stamp is None:
                del self.rows[job_id]
            else:
                row.status = Status.PENDING
        self._dirty_order = True

    def _apply_ledger_line(self, offset: int, raw: bytes) -> None:
        # The few fields the index keeps, read off the dict: a whole LedgerRecord per line was
        # two thirds of the time to open a 100,000-image folder.
        try:
            d = orjson.loads(raw)
            if not isinstance(d, dict) or job_id_problem(d.get("job_id")) is not None:
                raise ValueError("no job id")
            job_id: str = d["job_id"]
            status = JobStatus(d["status"])
            cost = amount(d.get("cost_usd"))
            outputs = d.get("outputs") or ()
            error = d.get("error")
        except (orjson.JSONDecodeError, BadAmount, KeyError, ValueError, TypeError):
            log.warning("%s: ignoring the line at byte %d", self.run_dir / LEDGER_NAME, offset)
            return
        row = self.rows.get(job_id)
        if row is None:
            row = self.rows[job_id] = JobRow(job_id=job_id, order=self._next_extra)
            self._next_extra += 1
            row.current = self._jobs_stamp is None
            meta = d.get("meta")
            row.name, row.meta = d.get("name"), meta if isinstance(meta, dict) else {}
            row.vars = _intern_map(d.get("vars"))
            self._dirty_order = True
        row.in_ledger = True
        row.lines.append(offset)
        row.cost_usd += cost
        self.spend += cost
        row.prompt = str(d.get("prompt") or "")
        parents = d.get("parents")
        if parents:
            row.parents = _parents(parents)
            for parent in row.parents:
                self.children.setdefault(parent["job_id"], set()).add(job_id)
        succeeded = status is JobStatus.SUCCEEDED
        if succeeded and outputs and isinstance(outputs[0], str):
            row.sha256, row.output, row.kind = str(d.get("sha256") or ""), outputs[0], ""
        else:
            row.sha256, row.output = "", ""
            kind = error.get("kind") if isinstance(error, dict) else None
            row.kind = sys.intern(str(kind)) if kind else "unknown"
        self._set_status(row, succeeded)

    def _set_status(self, row: JobRow, succeeded: bool | None = None) -> None:
        if not row.in_ledger:
            row.status = Status.PENDING
        elif not row.current:
            row.status = Status.SUPERSEDED
        elif succeeded is not None:
            row.status = Status.SUCCEEDED if succeeded else Status.FAILED
        elif row.status not in (Status.SUCCEEDED, Status.FAILED):
            row.status = Status.SUCCEEDED if row.output else Status.FAILED

    def _read_reviews(self) -> bool:
        from ..folder.reviews import review_problem

        lines, reset = self._read_appended(REVIEWS_FILE, self._reviews)
        if reset:
            self._reviews_of.clear()
        for offset, raw in lines:
            try:
                d = orjson.loads(raw)
                review = Review(job_id=d["job_id"], sha256=d["sha256"],
                                verdict=Verdict(d["verdict"]), note=d.get("note") or "",
                                at=d["at"])
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
                review = None
            if review is None or review_problem(review) is not None:
                log.warning("%s: ignoring the line at byte %d", self.run_dir / REVIEWS_FILE,
                            offset)
                continue
            self._reviews_of.setdefault(review.job_id, {})[review.sha256] = review
        return bool(lines) or reset

    def _keys(self) -> None:
        var_keys: dict[str, None] = {}
        meta_keys: dict[str, None] = {}
        for row in self.ordered:
            var_keys.update(dict.fromkeys(row.vars))
            meta_keys.update(dict.fromkeys(row.meta))
        self.var_keys, self.meta_keys = list(var_keys), list(meta_keys)

    # -- answers ------------------------------------------------------------------------------

    def verdict(self, row: JobRow) -> Review | None:
        """The verdict on the job's image now (None: unreviewed), as folder/reviews.py defines
        it: a review of an earlier image does not count, and ``cleared`` is none."""
        if not row.sha256:
            return None
        review = self._reviews_of.get(row.job_id, {}).get(row.sha256)
        if review is None or review.verdict is Verdict.CLEARED:
            return None
        return review

    def reviews_of(self, job_id: str) -> list[Review]:
        return sorted(self._reviews_of.get(job_id, {}).values(), key=lambda r: r.at)

    def history(self, row: JobRow) -> list[dict[str, Any]]:
        """Every ledger line of the job, read back from the file by offset."""
        out: list[dict[str, Any]] = []
        try:
            with (self.run_dir / LEDGER_NAME).open("rb") as fh:
                for offset in row.lines:
                    fh.seek(offset)
                    try:
                        d = orjson.loads(fh.readline())
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(d, dict) and d.get("job_id") == row.job_id:
                        out.append(d)
        except OSError as exc:
            raise InputError(f"cannot read {self.run_dir / LEDGER_NAME}: {exc}") from exc
        return out

    def counts(self) -> dict[str, Any]:
        by_status = dict.fromkeys(
            (Status.SUCCEEDED, Status.FAILED, Status.PENDING, Status.SUPERSEDED), 0)
        accepted = rejected = 0
        for row in self.ordered:
            by_status[row.status] += 1
            if row.status == Status.SUCCEEDED and row.job_id in self._reviews_of:
                review = self.verdict(row)
                if review is not None:
                    accepted += review.verdict is Verdict.ACCEPTED
                    rejected += review.verdict is Verdict.REJECTED
        meta = read_run_meta(self.run_dir)
        return {
            **by_status,
            "jobs": len(self.ordered) - by_status[Status.SUPERSEDED],
            "accepted": accepted,
            "rejected": rejected,
            "unreviewed": by_status[Status.SUCCEEDED] - accepted - rejected,
            "spend_usd": round(self.spend, 6),
            "state": describe_state(self.run_dir, str(meta.get("state", ""))),
        }
