"""Intents: ``DIR/intents.jsonl``, a line per request, durable before the request is sent.

A request that has left may be billed whatever happens to this process next: a ``kill -9``, a
``docker stop`` (SIGTERM, then SIGKILL), a full disk or a second Ctrl-C. So before each request
leaves, the pool writes an intent (the job, when the job started, its worst-case price) and waits
for a shared fsync (:class:`~batchgen.folder.durable.GroupSync`: the requests that are ready
together share one fsync). An intent is settled by

- a ``void`` line: the attempt was answered and not billed (a 429, a refused connection);
- a ledger line of the same job with the same ``started_at``: a job's record carries the cost of
  every attempt it made, an adopted orphan's record included.

Whatever is left unsettled counts at its reserved price: toward ``--budget`` and in ``status``
and ``report``, as *reserved* until a later run finds its record (an orphan adopted) or runs its
job again; from then on as *lost* (:meth:`Unsettled.lost`): sent by a run that was killed,
never answered to batchgen, and counted as spent, since the service bills what it finished.
A separate file rather than lines in the ledger, because every reader of the ledger (plan,
status, report, gallery, merge, and the tools users point at it) would otherwise have to learn
to skip them; this file is read by three functions and is rewritten small at the start and the
end of every run.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError, StorageError
from .durable import GroupSync, atomic_write

log = logging.getLogger(__name__)

INTENTS_NAME = "intents.jsonl"
# Lines after which the journal is rewritten with only what is unsettled, so that a run of a
# million requests neither grows it without end nor leaves a huge file for the next start to read.
COMPACT_EVERY = 10_000

Key = tuple[str, str]  # (job_id, started_at)


@dataclass(frozen=True, slots=True)
class Intent:
    iid: str
    job_id: str
    started_at: str
    usd: float

    def to_line(self) -> bytes:
        return orjson.dumps({
            "intent": self.iid, "job_id": self.job_id, "started_at": self.started_at,
            "usd": round(self.usd, 6),
        }) + b"\n"


class Unsettled:
    """Intents with no settlement yet, by (job id, started_at)."""

    def __init__(self) -> None:
        self.by_key: dict[Key, dict[str, Intent]] = {}
        # job id -> the latest started_at of its ledger records, for the jobs with intents only
        self._later: dict[str, str] = {}

    def add(self, intent: Intent) -> None:
        self.by_key.setdefault((intent.job_id, intent.started_at), {})[intent.iid] = intent
        self._later.setdefault(intent.job_id, "")

    def discard(self, intent: Intent) -> None:
        group = self.by_key.get((intent.job_id, intent.started_at))
        if group is not None:
            group.pop(intent.iid, None)
            if not group:
                del self.by_key[(intent.job_id, intent.started_at)]

    def settle(self, job_id: str, started_at: str) -> None:
        """A ledger record of this job's run: it carries the cost of all of its attempts."""
        self.by_key.pop((job_id, started_at), None)
        last = self._later.get(job_id)
        if last is not None and started_at > last:
            self._later[job_id] = started_at

    def ran_again(self, job_id: str, started_at: str) -> None:
        """A later run of this job reached the ledger (what :meth:`settle` learns, without
        settling anything here: these intents are an earlier run's)."""
        last = self._later.get(job_id)
        if last is not None and started_at > last:
            self._later[job_id] = started_at

    def lost(self) -> list[Intent]:
        """The intents whose job has a record of a later run: the request a killed run sent
        will never be heard of (its answer cannot be fetched again), so its outcome is as known
        as it will be. It stays counted, as spent: the service bills a finished generation.
        The others are still reserved: in flight now, or their job not yet run again."""
        later = self._later
        return [i for i in self if later.get(i.job_id, "") > i.started_at]

    def __iter__(self) -> Any:
        for group in self.by_key.values():
            yield from group.values()

    def __bool__(self) -> bool:
        return bool(self.by_key)

    @property
    def count(self) -> int:
        return sum(len(g) for g in self.by_key.values())

    @property
    def usd(self) -> float:
        return sum(i.usd for g in self.by_key.values() for i in g.values())


def read_unsettled(run_dir: Path) -> Unsettled:
    """The intents of ``run_dir`` that no ``void`` line settles (the ledger is not consulted).

    A torn last line (a crash mid-write) is skipped; a hand-edited amount that is not a finite,
    non-negative number is an :class:`InputError` naming the line, since it would skew the budget.
    """
    path = run_dir / INTENTS_NAME
    found: dict[str, Intent] = {}
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return Unsettled()
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                d = orjson.loads(raw)
            except orjson.JSONDecodeError:
                if raw.strip():
                    log.warning("%s:%d: ignoring a torn or malformed line", path, lineno)
                continue
            if not isinstance(d, dict):
                continue
            if "void" in d:
                found.pop(str(d["void"]), None)
                continue
            if "intent" not in d:
                continue
            usd = d.get("usd", 0.0)
            if isinstance(usd, bool) or not isinstance(usd, int | float) or not (
                math.isfinite(usd) and usd >= 0
            ):
                raise InputError(
                    f"{path}:{lineno}: usd: {usd!r} is not a finite, non-negative amount"
                )
            iid = str(d["intent"])
            found[iid] = Intent(iid, str(d.get("job_id", "")), str(d.get("started_at", "")),
                                float(usd))
    unsettled = Unsettled()
    for intent in found.values():
        unsettled.add(intent)
    return unsettled


class IntentJournal:
    """Writes this run's intents; keeps the earlier runs' unsettled ones (``carried``)."""

    def __init__(
        self, run_dir: Path, carried: Unsettled, *, sync_ledger: Callable[[], None] | None = None
    ) -> None:
        self.path = run_dir / INTENTS_NAME
        self.carried = carried
        # Called before a rewrite drops settled intents: the ledger lines that settled them must
        # be on disk first, or a power cut could lose both.
        self._sync_ledger = sync_ledger
        self.open_intents = Unsettled()  # this run's: sent, outcome not yet in the ledger
        self._run = uuid.uuid4().hex[:12]
        self._seq = 0
        self._lines = 0  # appended since the last rewrite
        self._sync = GroupSync(str(self.path))

    def open(self) -> None:
        """Rewrite the file with only what is still unsettled, then append to it."""
        self._rewrite(list(self.carried))
        self._reopen()

    def _reopen(self) -> None:
        try:
            self._sync.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open {self.path}: {exc.strerror}") from exc
        self._lines = 0

    def _compact(self) -> None:
        """Rewrite (fsync'd) with only what is unsettled, while no fsync is using the old file."""
        old = self._sync.fd
        if self._sync_ledger is not None:
            self._sync_ledger()
        self._rewrite([*self.carried, *self.open_intents])
        self._sync.mark_synced()  # the rewritten file holds every open intent, durably
        self._reopen()
        os.close(old)

    def record(self, job_id: str, started_at: str, usd: float) -> tuple[Intent, int]:
        """Write the intent of one request; (intent, the write to wait for with :meth:`durable`)."""
        if self._lines >= COMPACT_EVERY and not self._sync.busy:
            self._compact()
        self._seq += 1
        intent = Intent(f"{self._run}-{self._seq}", job_id, started_at, usd)
        self._write(intent.to_line())
        self.open_intents.add(intent)
        return intent, self._sync.wrote()

    async def durable(self, upto: int) -> None:
        """Wait until the write ``upto`` is on disk: one fsync for every request ready with it."""
        await self._sync.sync(upto)

    def void(self, intent: Intent) -> None:
        """The attempt was answered and billed nothing."""
        self.open_intents.discard(intent)
        try:
            self._write(orjson.dumps({"void": intent.iid}) + b"\n")
        except StorageError as exc:  # the intent stays: counted, which is the safe side
            log.warning("%s", exc)
            return
        self._sync.wrote()

    def settle(self, job_id: str, started_at: str) -> None:
        """The job's ledger line is written: it settles every intent of this job's run."""
        self.open_intents.settle(job_id, started_at)
        self.carried.ran_again(job_id, started_at)

    def close(self) -> None:
        """Keep only what is unsettled: the earlier runs' and this run's abandoned requests."""
        fd, self._sync.fd = self._sync.fd, -1
        if fd >= 0:
            os.close(fd)
        self._rewrite([*self.carried, *self.open_intents])

    def _write(self, line: bytes) -> None:
        if self._sync.fd < 0:
            raise StorageError(f"{self.path} is not open")
        self._lines += 1
        try:
            os.write(self._sync.fd, line)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror}") from exc

    def _rewrite(self, intents: list[Intent]) -> None:
        if not intents and not self.path.exists():
            return
        with atomic_write(self.path) as fh:
            for intent in intents:
                fh.write(intent.to_line())
