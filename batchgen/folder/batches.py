"""The run folder's record of its batches: ``DIR/batches.jsonl`` and ``DIR/batches/``.

Creating a batch commits money and cannot be undone or repeated safely, so every step is written
down, fsync'd, before the next one is taken:

    intent     display name, its request file and its jobs file (both fsync'd first)
    uploaded   the request file's name on the service
    created    the batch's name (``batches/...``), right after the create call returned
    state      the last state polled, with its counts
    collecting / collected    results are going into the store and ledger / all of them are in
    closed     finished without anything (more) to collect: expired, failed, cancelled, abandoned

The journal is append-only JSON lines, one event each; the events of one display name fold into
one :class:`BatchRecord` (later fields win). A torn last line (``kill -9`` mid-write) is dropped,
as the ledger does. A batch whose intent has no ``created`` event may or may not exist on the
service: it is looked up by display name before anything else is done with its jobs.

``DIR/batches/<display name>.jobs.jsonl`` lists the batch's jobs, one small object each (id,
prompt, model, size, ratio, reference sources, seed): everything the ledger line needs, so
collecting needs neither the manifest nor more memory than one batch's job list.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import StorageError
from ..spec import Chain, JobSpec, Reference
from .appender import repair_tail
from .durable import replace_atomically
from .layout import JOURNAL_NAME, now_iso
from .ledger import check_job_id

log = logging.getLogger(__name__)

BATCH_DIR = "batches"


class Phase(str, enum.Enum):
    INTENT = "intent"  # may or may not exist on the service
    UPLOADED = "uploaded"  # request file uploaded; may or may not exist on the service
    CREATED = "created"  # exists; pending or running, or finished and not collected yet
    COLLECTED = "collected"  # every result is in the ledger
    CLOSED = "closed"  # over with nothing (more) to collect; its unfinished jobs are pending

    @property
    def open(self) -> bool:
        """Its jobs belong to it: they are neither sent live nor put in another batch."""
        return self in (Phase.INTENT, Phase.UPLOADED, Phase.CREATED)


@dataclass(slots=True)
class BatchRecord:
    display_name: str
    seq: int = 0
    phase: Phase = Phase.INTENT
    model: str = ""
    jobs: int = 0
    reserve_usd: float = 0.0
    request_bytes: int = 0
    intent_at: str = ""
    input_file: str | None = None
    name: str | None = None
    created_at: str = ""
    state: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    responses_file: str | None = None
    collecting: bool = False
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    returned: int = 0
    lost: int = 0  # results the service counted that could not be had (charged, not pending)
    cost_usd: float = 0.0
    files_deleted: bool = False
    note: str = ""
    state_at: str = ""
    expected_result_bytes: int = 0
    wave: int = 0  # chains (issue 22): 1 for roots, n for jobs n-1 steps from their root

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "state": self.state or self.phase.value,
            "phase": self.phase.value,
            "jobs": self.jobs,
            "succeeded": self.succeeded or self.counts.get("successfulRequestCount", 0),
            "failed": self.failed or self.counts.get("failedRequestCount", 0),
            "created_at": self.created_at or self.intent_at,
            "lost": self.lost,
            "note": self.note,
            "state_at": self.state_at,
            **({"wave": self.wave} if self.wave else {}),
        }


def jobs_line(spec: JobSpec) -> bytes:
    """What the ledger line of the job needs, the reference contents and provenance included."""
    return orjson.dumps({
        "k": spec.job_id, "p": spec.prompt, "m": spec.model, "s": spec.image_size,
        "a": spec.aspect_ratio, "r": [[r.source, r.sha256] for r in spec.references],
        "seed": spec.seed, "t": spec.temperature, "u": spec.user_id, "sf": spec.source_file,
        "sl": spec.source_line, "meta": [list(kv) for kv in spec.meta],
        **_chain_fields(spec),
    }) + b"\n"


def _chain_fields(spec: JobSpec) -> dict[str, Any]:
    """A chained job's lineage (issue 22): its parents and the images it was made from."""
    chain = spec.chain
    if chain is None or not chain.parents:
        return {}
    return {"par": list(chain.parents), "ed": chain.edit_of, "dep": chain.depth,
            "from": [list(kv) for kv in chain.made_from]}


def spec_from_line(d: dict[str, Any]) -> JobSpec:
    """Enough of a job to price and record it (the reference bytes are not needed for that)."""
    refs = []
    for r in d.get("r") or ():
        source, sha = (r[0], r[1]) if isinstance(r, list) else (r, "")
        refs.append(Reference(source=str(source), sha256=str(sha or "")))
    return JobSpec(
        job_id=str(d["k"]), prompt=str(d.get("p", "")), model=str(d.get("m", "")),
        image_size=str(d.get("s", "")), aspect_ratio=d.get("a"), references=tuple(refs),
        seed=d.get("seed"), temperature=d.get("t"), user_id=d.get("u"),
        source_file=str(d.get("sf") or ""), source_line=int(d.get("sl") or 0),
        meta=tuple((str(k), v) for k, v in d.get("meta") or ()),
        chain=Chain(edit_of=d.get("ed"), parents=tuple(map(str, d["par"])),
                    depth=int(d.get("dep") or 0),
                    made_from=tuple((str(a), str(b)) for a, b in d.get("from") or ()))
        if d.get("par") else None,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:32] or "run"


class Journal:
    """``DIR/batches.jsonl`` folded into records; every append is fsync'd before it returns."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / JOURNAL_NAME
        self.dir = run_dir / BATCH_DIR
        self.folder_id = ""
        self.records: dict[str, BatchRecord] = {}
        self.refs: dict[str, dict[str, Any]] = {}  # reference sha256/url -> uploaded file
        self._load()

    # -- reading ----------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return
        with fh:
            for raw in fh:
                try:
                    ev = orjson.loads(raw)
                    self._apply(ev)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    if raw.strip():
                        log.warning("%s: ignoring a %s line", self.path,
                                    "torn last" if not raw.endswith(b"\n") else "malformed")

    def _apply(self, ev: dict[str, Any]) -> None:
        kind = ev["ev"]
        if kind == "folder":
            self.folder_id = str(ev["id"])
            return
        if kind == "ref":
            self.refs[str(ev["ref"])] = ev
            return
        dn = str(ev["display_name"])
        rec = self.records.get(dn)
        if rec is None:
            rec = self.records[dn] = BatchRecord(display_name=dn)
        if "state" in ev and "at" in ev:
            rec.state_at = str(ev["at"])  # when a poll (or the create) last saw it change
        for key, value in ev.items():
            if key in ("ev", "display_name", "at"):
                continue
            if key == "phase":
                rec.phase = Phase(value)
            elif hasattr(rec, key):
                setattr(rec, key, value)

    def open_records(self) -> list[BatchRecord]:
        return [r for r in self.records.values() if r.phase.open]

    def all_records(self) -> list[BatchRecord]:
        return sorted(self.records.values(), key=lambda r: r.seq)

    def jobs_path(self, display_name: str) -> Path:
        return self.dir / f"{display_name}.jobs.jsonl"

    def requests_path(self, display_name: str) -> Path:
        return self.dir / f"{display_name}.requests.jsonl"

    def iter_jobs(self, display_name: str) -> Iterator[dict[str, Any]]:
        path = self.jobs_path(display_name)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            log.warning("%s: missing; the batch's jobs cannot be named", path)
            return
        with fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    d = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(d, dict) and "k" in d:
                    check_job_id(path, lineno, d["k"])  # collected results are saved under it
                    yield d

    def open_job_ids(self) -> set[str]:
        """Every job that sits in a batch that may exist or is not collected yet."""
        ids: set[str] = set()
        for rec in self.open_records():
            ids.update(str(d["k"]) for d in self.iter_jobs(rec.display_name))
        return ids

    # -- writing ----------------------------------------------------------------------------

    def append(self, ev: dict[str, Any]) -> None:
        """Apply and durably record one event."""
        ev = {**ev, "at": now_iso()}
        line = orjson.dumps(ev) + b"\n"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            repair_tail(self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._apply(ev)

    def update(self, display_name: str, **fields: Any) -> None:
        if "phase" in fields and isinstance(fields["phase"], Phase):
            fields["phase"] = fields["phase"].value
        self.append({"ev": "batch", "display_name": display_name, **fields})

    def ensure_folder_id(self) -> str:
        if not self.folder_id:
            self.append({"ev": "folder", "id": secrets.token_hex(3)})
        return self.folder_id

    def next_seq(self) -> int:
        return max((r.seq for r in self.records.values()), default=0) + 1

    def display_name(self, seq: int, job_ids_digest: str) -> str:
        """Derived from the run folder (its name and a random id kept in the journal, so a moved
        folder keeps finding its batches) and the jobs the batch holds (a digest of their ids);
        the sequence number keeps a resubmission of the same jobs apart from the first try."""
        folder = self.ensure_folder_id()
        return f"batchgen-{_slug(self.run_dir.resolve().name)}-{folder}-{seq:05d}-{job_ids_digest}"


def seconds_since(iso: str) -> float:
    """Seconds from an RFC 3339 time (ours or the service's) to now; inf if unreadable."""
    try:
        then = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.timezone.utc)
    return max((dt.datetime.now(dt.timezone.utc) - then).total_seconds(), 0.0)


def digest_ids(ids: list[str]) -> str:
    h = hashlib.blake2b(digest_size=4)
    for job_id in ids:
        h.update(job_id.encode())
        h.update(b"\n")
    return h.hexdigest()


SEEN_NAME = "seen.json"


def record_seen(run_dir: Path, states: dict[str, str]) -> None:
    """The states a poll of the service just saw, with when (``batches/seen.json``, replaced
    whole each poll; the journal keeps only changes, so it does not grow with every poll)."""
    if not states:
        return
    path = run_dir / BATCH_DIR / SEEN_NAME
    seen = read_seen(run_dir)
    at = now_iso()
    seen.update({name: {"state": state, "seen_at": at} for name, state in states.items()})
    replace_atomically(path, orjson.dumps(seen), parents=True)


def read_seen(run_dir: Path) -> dict[str, dict[str, str]]:
    """display name -> {"state", "seen_at"} of the last poll that saw it; {} when none has."""
    try:
        data = orjson.loads((run_dir / BATCH_DIR / SEEN_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
