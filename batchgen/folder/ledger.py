"""The ledger: ``DIR/ledger.jsonl``, one line per finished job, the run's source of truth.

This module is the record format and its readers, all that ``status`` and ``report`` need; the
appender is :mod:`.appender`. Readers trust the last line per ``job_id`` and skip a torn final
line, as ``kill -9`` or a full disk can leave one. A last line that is a whole record but lacks
its newline is a record, not a torn line: the writer adds the newline before it appends.
"""

from __future__ import annotations

import enum
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.jsonl"


class JobStatus(str, enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    kind: str
    retryable: bool
    http_status: int | None
    message: str


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    job_id: str
    status: JobStatus
    prompt: str
    attempts: int
    outputs: tuple[str, ...] = ()
    text: str | None = None
    usage: dict[str, Any] | None = None
    cost_usd: float = 0.0
    latency_s: float = 0.0
    finished_at: str = ""
    error: ErrorInfo | None = None
    model: str = ""
    image_size: str = ""
    aspect_ratio: str | None = None
    # Each reference as {"path": as the manifest named it, "sha256": of what was sent}; a line
    # from before provenance names only the path (sha256 None).
    references: tuple[dict[str, str | None], ...] = ()
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    mime_type: str | None = None
    sha256: str | None = None
    started_at: str = ""
    adopted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # How the job was made: "live" (generateContent) or "batch" (the Batch API, then ``batch``
    # names the batch, ``batches/...``).
    mode: str = "live"
    batch: str | None = None
    # Provenance (see batchgen.current): the user's id and metadata, where the job was written,
    # and the one generation setting not above. Lines from before them read as None / {} / "".
    name: str | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None
    # The job's var values (matrix rows), the optional request fields it set (current.request_of)
    # and a grounded answer's groundingMetadata, as the service sent it.
    vars: dict[str, str] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)
    grounding: Any = None
    # A redo of a rejected image (run --redo-rejected): that image's sha256, and the note it was
    # rejected with.
    replaces: str | None = None
    note: str = ""
    # Live mode's service tier (run --tier): the one the image was made and billed at (the
    # ``x-gemini-service-tier`` answer header when there is one); None: standard, or batch.
    tier: str | None = None
    # Chains (issue 22): the jobs this one was made from, each {"job_id", "sha256"} (the image
    # it used); and, in the sidecar only, the answer's parts a conversation sends back (texts,
    # thoughtSignatures, {"image": true} for the saved image's place).
    parents: tuple[dict[str, Any], ...] = ()
    turn: tuple[dict[str, Any], ...] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict, which deep-copies the usage dict and was
        # a measurable share of the time per image.
        d: dict[str, Any] = {
            "job_id": self.job_id,
            "status": self.status.value,
            "name": self.name,
            "source": self.source,
            "meta": self.meta,
            "vars": self.vars,
            "prompt": self.prompt,
            "attempts": self.attempts,
            "outputs": list(self.outputs),
            "text": self.text,
            "usage": self.usage,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "finished_at": self.finished_at,
            "error": None if self.error is None else {
                "kind": self.error.kind,
                "retryable": self.error.retryable,
                "http_status": self.error.http_status,
                "message": self.error.message,
            },
            "model": self.model,
            "image_size": self.image_size,
            "aspect_ratio": self.aspect_ratio,
            "references": list(self.references),
            "seed": self.seed,
            "temperature": self.temperature,
            "width": self.width,
            "height": self.height,
            "mime_type": self.mime_type,
            "sha256": self.sha256,
            "started_at": self.started_at,
            "mode": self.mode,
        }
        if self.batch is not None:
            d["batch"] = self.batch
        if self.adopted:
            d["adopted"] = True
        if self.extra:
            d["extra"] = self.extra
        if self.request:
            d["request"] = self.request
        if self.grounding is not None:
            d["grounding"] = self.grounding
        if self.replaces is not None:
            d["replaces"] = self.replaces
            d["note"] = self.note
        if self.tier is not None:
            d["tier"] = self.tier
        if self.parents:
            d["parents"] = list(self.parents)
        if self.turn is not None:
            d["turn"] = list(self.turn)
        return d

    def to_line(self) -> bytes:
        return orjson.dumps(self.to_dict()) + b"\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LedgerRecord:
        err = d.get("error")
        return cls(
            job_id=str(d["job_id"]),
            status=JobStatus(d["status"]),
            prompt=str(d.get("prompt", "")),
            attempts=int(d.get("attempts", 0)),
            outputs=tuple(d.get("outputs") or ()),
            text=d.get("text"),
            usage=d.get("usage"),
            cost_usd=amount(d.get("cost_usd")),
            latency_s=float(d.get("latency_s") or 0.0),
            finished_at=str(d.get("finished_at", "")),
            error=ErrorInfo(**err) if isinstance(err, dict) else None,
            model=str(d.get("model", "")),
            image_size=str(d.get("image_size", "")),
            aspect_ratio=d.get("aspect_ratio"),
            references=tuple(_reference(r) for r in d.get("references") or ()),
            seed=d.get("seed"),
            width=d.get("width"),
            height=d.get("height"),
            mime_type=d.get("mime_type"),
            sha256=d.get("sha256"),
            started_at=str(d.get("started_at", "")),
            adopted=bool(d.get("adopted", False)),
            extra=dict(d.get("extra") or {}),
            mode=str(d.get("mode") or "live"),
            batch=d.get("batch"),
            name=d.get("name"),
            source=str(d.get("source") or ""),
            meta=dict(d.get("meta") or {}),
            temperature=d.get("temperature"),
            vars=dict(d.get("vars") or {}),
            request=dict(d.get("request") or {}),
            grounding=d.get("grounding"),
            replaces=d.get("replaces"),
            note=str(d.get("note") or ""),
            tier=d.get("tier") if isinstance(d.get("tier"), str) else None,
            parents=tuple(p for p in d.get("parents") or () if isinstance(p, dict)),
            turn=tuple(d["turn"]) if isinstance(d.get("turn"), list) else None,
        )


def _reference(ref: Any) -> dict[str, str | None]:
    """A ledger reference: ``{"path", "sha256"}``, or a plain path as lines before them held."""
    if isinstance(ref, dict):
        return {"path": str(ref.get("path", "")), "sha256": ref.get("sha256")}
    return {"path": str(ref), "sha256": None}


class BadAmount(ValueError):
    """A money amount in the ledger that is not a finite, non-negative number."""


def amount(value: Any, field_name: str = "cost_usd") -> float:
    """A ledger amount as a float; :class:`BadAmount` for NaN, infinities, negatives, non-numbers.

    A hand-edited ``"NaN"`` would otherwise make every sum NaN, and every comparison with the
    budget false: the cap would be off.
    """
    if value is None:
        return 0.0
    try:
        usd = float(value)
    except (TypeError, ValueError):
        raise BadAmount(f"{field_name}: {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(usd) or usd < 0:
        raise BadAmount(f"{field_name}: {value!r} is not a finite, non-negative amount")
    return usd


def bad_amount(path: Path, lineno: int, exc: BadAmount) -> InputError:
    return InputError(f"{path}:{lineno}: {exc}; fix or remove that ledger line")


def warn_bad_line(path: Path, lineno: int, raw: bytes) -> None:
    torn = not raw.endswith(b"\n")
    kind = "torn last" if torn else "malformed"
    log.warning("%s:%d: ignoring a %s ledger line", path, lineno, kind)


def loads_nonfinite(raw: bytes) -> Any:
    """A line orjson refused, read again by the standard library, which takes ``NaN``,
    ``Infinity`` and ``1e999``: such a line is a record whose amount is wrong (refused, naming
    the line), not a torn one to skip, after which its job would read as pending and be paid
    for again. ValueError if it is not JSON either."""
    import json

    return json.loads(raw)


def bad_job_id(path: Path, lineno: int, problem: str) -> InputError:
    return InputError(f"{path}:{lineno}: job_id: {problem}; fix or remove that line")


# spec.JOB_ID_FORM written again, so that `status` starts without the specs module (~6 ms);
# tests/reporting/test_status_scan.py keeps the two the same.
JOB_ID_FORM = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9._-]{0,131}")


def check_job_id(path: Path, lineno: int, job_id: object) -> None:
    """An id read back from a run folder names files: it must keep the manifest ids' rule."""
    if type(job_id) is str and JOB_ID_FORM.fullmatch(job_id):
        return  # the form every id batchgen makes has: a million lines need no more
    from ..spec import job_id_problem  # here: `status` starts without the specs module

    problem = job_id_problem(job_id)
    if problem is not None:
        raise bad_job_id(path, lineno, problem)


def iter_lines(path: Path) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """(line number, raw bytes, parsed object) per JSON-object line; others are warned about.

    A line with a ``job_id`` that could name a path outside the folder is an InputError."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    loads = orjson.loads
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                try:
                    obj = loads_nonfinite(raw)
                except ValueError:
                    warn_bad_line(path, lineno, raw)
                    continue
            if isinstance(obj, dict):
                if "job_id" in obj:
                    check_job_id(path, lineno, obj["job_id"])
                yield lineno, raw, obj
            else:
                warn_bad_line(path, lineno, raw)


def iter_records(path: Path) -> Iterator[tuple[int, bytes, LedgerRecord]]:
    """Every well-formed record with its line number and raw line, in file order."""
    for lineno, raw, obj in iter_lines(path):
        try:
            record = LedgerRecord.from_dict(obj)
        except BadAmount as exc:
            raise bad_amount(path, lineno, exc) from None
        except (KeyError, ValueError, TypeError):
            warn_bad_line(path, lineno, raw)
            continue
        yield lineno, raw, record


def iter_ledger(path: Path) -> Iterator[LedgerRecord]:
    """Every well-formed record in file order. A torn or garbled line is skipped with a warning."""
    for _, _, record in iter_records(path):
        yield record


def read_ledger(path: Path) -> dict[str, LedgerRecord]:
    """The last record per job id."""
    latest: dict[str, LedgerRecord] = {}
    for rec in iter_ledger(path):
        latest[rec.job_id] = rec
    return latest
