"""The plan: which of the manifest's jobs still need a request, judged by the ledger alone.

The ledger is read once into a compact index (job id -> state), not into full records, so a
million-line ledger plans in seconds and well under a gigabyte. ``run.json`` keeps the run's
settings and the manifest's hash so a resumed run can say what changed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import fnmatch
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .errors import InputError, StorageError
from .ledger import LEDGER_NAME, LedgerRecord, iter_lines, warn_bad_line
from .spec import JobSpec
from .store import adopt_orphans

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
SUCCEEDED = "succeeded"
RETRYABLE = "retryable"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class LedgerIndex:
    """job id -> "succeeded", "retryable", or the error kind of a permanent failure; and spend."""

    states: dict[str, str] = field(default_factory=dict)
    cost_usd: float = 0.0

    def get(self, job_id: str) -> str | None:
        return self.states.get(job_id)


def read_index(ledger: Path) -> LedgerIndex:
    """The last line per job wins. A torn or garbled line is skipped with a warning."""
    index = LedgerIndex()
    states = index.states
    intern = sys.intern
    for lineno, raw, d in iter_lines(ledger):
        try:
            job_id = d["job_id"]
            if d["status"] == SUCCEEDED:
                state = SUCCEEDED
            else:
                err = d.get("error") or {}
                state = RETRYABLE if err.get("retryable") else intern(str(err.get("kind")))
            index.cost_usd += float(d.get("cost_usd") or 0.0)
        except (KeyError, TypeError, AttributeError, ValueError):
            warn_bad_line(ledger, lineno, raw)
            continue
        states[job_id] = state
    return index


def shard_of(job_id: str, n: int) -> int:
    """The 1-based shard a job belongs to: a hash of its id, the same on every machine."""
    digest = hashlib.blake2b(job_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n + 1


def manifest_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """What the user asked to run, beyond 'everything not yet done'."""

    retry_failed: tuple[str, ...] | None = None
    only: str | None = None
    shard: tuple[int, int] | None = None
    limit: int | None = None

    def in_scope(self, job_id: str) -> bool:
        """Whether the job belongs to this run folder at all (this machine's shard)."""
        return self.shard is None or shard_of(job_id, self.shard[1]) == self.shard[0]

    def picked(self, job_id: str) -> bool:
        """Whether ``--only`` picks the job for this invocation."""
        return self.only is None or fnmatch.fnmatchcase(job_id, self.only)


@dataclass(slots=True)
class PlanCounts:
    total: int = 0
    done: int = 0
    failed_skipped: int = 0
    pending: int = 0
    new: int = 0
    by_size: dict[str, int] = field(default_factory=dict)
    estimate_usd: float = 0.0


class Plan:
    """Streams the jobs to send, in manifest order; counts everything on a first pass."""

    def __init__(
        self, jobs: Callable[[], Iterable[JobSpec]], index: LedgerIndex, selection: Selection
    ) -> None:
        # A factory, not an iterable: the manifest is streamed once to count, once to run.
        self._jobs = jobs
        self.index = index
        self.selection = selection

    def wants(self, job: JobSpec) -> bool:
        """Whether this invocation sends the job: in scope, picked, and not settled yet."""
        if not (self.selection.in_scope(job.job_id) and self.selection.picked(job.job_id)):
            return False
        state = self.index.get(job.job_id)
        if state is None or state == RETRYABLE:
            return True
        if state == SUCCEEDED:
            return False
        retry = self.selection.retry_failed
        return retry is not None and (not retry or state in retry)

    def count(self, price: Callable[[JobSpec], float] | None = None) -> PlanCounts:
        """One pass over the manifest: what is done, what is skipped, what a run would send."""
        c = PlanCounts()
        for job in self._jobs():
            if not self.selection.in_scope(job.job_id):
                continue
            c.total += 1
            state = self.index.get(job.job_id)
            if state is None:
                c.new += 1
            if self.wants(job):
                if self.selection.limit is None or c.pending < self.selection.limit:
                    c.pending += 1
                    c.by_size[job.image_size] = c.by_size.get(job.image_size, 0) + 1
                    if price is not None:
                        c.estimate_usd += price(job)
            elif state == SUCCEEDED:
                c.done += 1
            elif state is not None and state != RETRYABLE:
                c.failed_skipped += 1
        return c

    def __iter__(self) -> Iterator[JobSpec]:
        sent = 0
        for job in self._jobs():
            if self.selection.limit is not None and sent >= self.selection.limit:
                return
            if self.wants(job):
                sent += 1
                yield job


class RunFolder:
    """``DIR/``: run.json, ledger.jsonl and images/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ledger_path = path / LEDGER_NAME
        self.run_file = path / RUN_FILE

    def read_meta(self) -> dict[str, Any]:
        try:
            meta = orjson.loads(self.run_file.read_bytes())
            return meta if isinstance(meta, dict) else {}
        except (OSError, orjson.JSONDecodeError):
            return {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.run_file.with_suffix(".json.tmp")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
            os.replace(tmp, self.run_file)
        except OSError as exc:
            raise StorageError(f"cannot write {self.run_file}: {exc.strerror}") from exc

    def update_meta(self, **changes: Any) -> dict[str, Any]:
        meta = {**self.read_meta(), **changes, "updated_at": now_iso()}
        self.write_meta(meta)
        return meta

    def lock(self) -> int:
        """Hold the folder for this process: two runs on one folder would pay for everything twice.

        An flock dies with its process, so a ``kill -9`` never leaves a stale lock behind.
        """
        path = self.path / LOCK_FILE
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot use the run folder {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(
                f"{self.path}: another batchgen run is using this folder; wait for it to end"
            ) from None
        return fd

    def orphans(self, index: LedgerIndex) -> list[LedgerRecord]:
        """Images saved with their sidecar whose ledger line never got written (a crash or a
        failed ledger write between the two): paid for, so they are adopted, not sent again.
        They enter ``index`` at once so the plan and the budget see them."""
        done = {job_id for job_id, state in index.states.items() if state == SUCCEEDED}
        adopted = adopt_orphans(self.path, done)
        for rec in adopted:
            index.states[rec.job_id] = SUCCEEDED
            index.cost_usd += rec.cost_usd
        return adopted


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

