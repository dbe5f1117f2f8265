"""The rows of an export, streamed out of a run folder in job id order.

The ledger is read with :func:`batchgen.ledger.iter_lines` (the last line per job wins, a torn
tail is skipped) into a temporary SQLite index keyed by job id, next to the manifest's current
jobs (``DIR/jobs.jsonl``, read with :func:`batchgen.current.iter_current`, when the run wrote
one). A dict of a million records would be a
gigabyte; the index keeps memory flat (SQLite's page cache is bounded) and hands the rows back
sorted, which is what makes every export of the same folder the same.

Only what an export needs is kept from each ledger line (no usage, no text), so the index on disk
is a fraction of the ledger. It lives in the system's temporary folder (``TMPDIR``).
"""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from ..errors import InputError
from ..folder.current import CURRENT_NAME, iter_current
from ..folder.layout import RUN_FILE
from ..folder.ledger import LEDGER_NAME, iter_lines
from ..folder.reviews import Review, Verdict, current_verdicts, read_reviews
from ..folder.verdicts import has_reviews

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
# Bounded, so memory stays flat however many jobs there are; 8 MB was the quickest of the sizes
# tried (bench/RESULTS.md, "Export: the index's page cache").
_CACHE_KIB = 8 * 1024

# The provenance columns, in the order every format writes them. A meta field named like one of
# these (or like a format's own column) is written as ``meta_<name>``; one that ``datasets``
# would load as a file (``*file_name``) gets ``_text`` (MetaSchema.columns).
PROVENANCE = (
    "job_id", "name", "prompt", "model", "image_size", "aspect_ratio", "width", "height",
    "seed", "temperature", "sha256", "mime_type", "cost_usd", "attempts", "finished_at",
    "source", "references", "parents",
)
FAILED_COLUMNS = ("status", "error_kind", "error_message")
# The review of each image (reviews.jsonl): "accepted", "rejected" or "unreviewed", and its note.
REVIEW_COLUMNS = ("verdict", "verdict_note")


class Reviewed(str, enum.Enum):
    """``export --reviewed``: which images by their verdict."""

    DEFAULT = "default"  # all but the rejected ones
    ACCEPTED = "accepted"
    ALL = "all"
# What the manifest's current jobs (jobs.jsonl) say over the ledger: edited labels, and the var
# values of jobs run before they were recorded (their ids and prompts are unchanged).
_CURRENT_KEYS = ("name", "meta", "source", "vars")
RESERVED = frozenset(PROVENANCE + FAILED_COLUMNS + REVIEW_COLUMNS
                     + ("file_name", "image", "split", "meta"))
INT_COLUMNS = frozenset({"width", "height", "seed", "attempts"})
FLOAT_COLUMNS = frozenset({"temperature", "cost_usd"})

_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Row:
    """One job to export: its columns (meta flattened) and the image in the run folder."""

    job_id: str
    columns: dict[str, Any]
    image: Path | None  # None: a failed job (--include-failed), or its image is missing
    ext: str  # "png", "jpg", "webp"; "" without an image
    stem: str = ""  # its file's name in the dataset, without extension (--name); "": the job id
    data: bytes | None = None  # the image re-encoded (--max-side, --image-format); None: as is
    split: str = ""  # its split (--split), decided before re-encoding changes its columns

    @property
    def file_stem(self) -> str:
        return self.stem or self.job_id


@dataclass(slots=True)
class MetaSchema:
    """The meta fields seen across the exported rows, each with one column name and type."""

    kinds: dict[str, set[str]] = field(default_factory=dict)

    def see(self, meta: dict[str, Any]) -> None:
        for key, value in meta.items():
            self.kinds.setdefault(key, set()).add(_kind(value))

    def columns(self) -> dict[str, tuple[str, str]]:
        """meta key -> (column name, type: "bool" | "int" | "float" | "string"), by key.

        A key keeps its own name unless a format needs it; only then is it renamed, and never
        onto a name another key has as its own (a user's ``meta_image`` stays ``meta_image``
        when ``image`` has to move).
        """
        out: dict[str, tuple[str, str]] = {}
        keys = sorted(self.kinds)
        own = {k for k in keys if k not in RESERVED and not _read_as_file(k)}
        taken = set(RESERVED) | own
        for key in keys:
            name = key
            if key not in own:
                name = f"meta_{key}" if key in RESERVED else key
                if _read_as_file(name):
                    name = f"{name}_text"
                while name in taken:
                    name = f"meta_{name}"
                taken.add(name)
            out[key] = (name, _common_type(self.kinds[key] - {"null"}))
        return out


def _read_as_file(column: str) -> bool:
    """``datasets`` loads every ``file_name``/``*_file_name`` (and ``*_file_names``) column of
    an imagefolder as files to open, so a text column may not end so; it gets ``_text``."""
    return column in ("file_name", "file_names") or column.endswith(("_file_name", "_file_names"))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "string"
    if isinstance(value, float):
        return "float"
    return "string"


def _common_type(kinds: set[str]) -> str:
    """One type a column can hold every value in; mixed kinds fall back to text."""
    if not kinds:
        return "string"
    if len(kinds) == 1:
        return next(iter(kinds))
    if kinds == {"int", "float"}:
        return "float"
    return "string"


def coerce(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        return orjson.dumps(value).decode()
    if kind == "float":
        return float(value)
    return value


def _references(value: Any) -> list[dict[str, str | None]]:
    """``[{"path", "sha256"}]``; old ledgers hold plain paths."""
    refs: list[dict[str, str | None]] = []
    for ref in value or ():
        if isinstance(ref, dict):
            sha = ref.get("sha256")
            refs.append({"path": str(ref.get("path", "")), "sha256": None if sha is None
                         else str(sha)})
        else:
            refs.append({"path": str(ref), "sha256": None})
    return refs


def _project(d: dict[str, Any]) -> dict[str, Any]:
    """What an export keeps of a ledger line (its usage, text and timings are left behind)."""
    keep = {k: d.get(k) for k in PROVENANCE if k in d}
    keep["status"] = d.get("status")
    keep["outputs"] = d.get("outputs") or []
    keep["meta"] = d.get("meta") if isinstance(d.get("meta"), dict) else {}
    if isinstance(d.get("vars"), dict) and d["vars"]:
        keep["vars"] = d["vars"]
    err = d.get("error")
    if isinstance(err, dict):
        keep["error_kind"] = err.get("kind")
        keep["error_message"] = err.get("message")
    return keep


class RunSource:
    """A run folder's exportable jobs, indexed once; iterate :meth:`records` as often as needed.

    Use as a context manager: the temporary index is deleted on exit.
    """

    def __init__(self, run_dir: Path, *, include_failed: bool = False,
                 reviewed: Reviewed = Reviewed.DEFAULT) -> None:
        if not run_dir.is_dir():
            raise InputError(f"{run_dir}: no such run folder")
        self.run_dir = run_dir
        self.ledger = run_dir / LEDGER_NAME
        if not self.ledger.is_file():
            hint = "has run.json but no ledger yet" if (run_dir / RUN_FILE).is_file() else (
                "no ledger.jsonl")
            raise InputError(f"{run_dir}: not a batchgen run folder with results ({hint})")
        self.include_failed = include_failed
        self.reviewed = reviewed
        self.verdicts: dict[str, Review] = {}
        # Rows the verdicts left out, in the last pass over raw(): rejected, or not accepted.
        self.review_left_out = 0
        self.jobs_file = run_dir / CURRENT_NAME
        self.has_jobs_file = self.jobs_file.is_file()
        self.failed_left_out = 0
        self.not_current = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="batchgen-export-")
        self._db = sqlite3.connect(os.path.join(self._tmp.name, "index.sqlite"))
        self._build()

    def __enter__(self) -> RunSource:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        self._tmp.cleanup()

    def _build(self) -> None:
        db = self._db
        # A throwaway index: no journal, no fsync. Big pages suit rows of a few hundred bytes
        # stored in key order (WITHOUT ROWID), so the final ordered scan reads sequentially.
        for pragma in ("page_size = 65536", "journal_mode = OFF", "synchronous = OFF",
                       "locking_mode = EXCLUSIVE", "temp_store = FILE",
                       f"cache_size = -{_CACHE_KIB}"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE rec (job_id TEXT PRIMARY KEY, ok INTEGER, body BLOB)"
                   " WITHOUT ROWID")
        db.execute("CREATE TABLE cur (job_id TEXT PRIMARY KEY, body BLOB) WITHOUT ROWID")
        dumps = orjson.dumps
        if self.has_jobs_file:
            db.executemany(
                "INSERT OR REPLACE INTO cur VALUES (?, ?)",
                ((d["job_id"], dumps({k: d.get(k) for k in _CURRENT_KEYS if k in d}))
                 for d in iter_current(self.run_dir)),
            )

        reviewed = {r.job_id for r in read_reviews(self.run_dir)} if has_reviews(
            self.run_dir) else set()
        shas: dict[str, str] = {}

        def rows() -> Iterator[tuple[str, int, bytes | None]]:
            for _, _, d in iter_lines(self.ledger):
                job_id = d.get("job_id")
                if not isinstance(job_id, str):
                    continue
                ok = d.get("status") == SUCCEEDED
                if job_id in reviewed:
                    sha = d.get("sha256")
                    if ok and isinstance(sha, str):
                        shas[job_id] = sha
                    else:
                        shas.pop(job_id, None)
                # A failure that is not exported still replaces an earlier line of the job.
                yield job_id, int(ok), dumps(_project(d)) if ok or self.include_failed else None

        db.executemany("INSERT OR REPLACE INTO rec VALUES (?, ?, ?)", rows())
        if reviewed:
            self.verdicts = current_verdicts(self.run_dir, shas)
        where = "" if self.include_failed else " WHERE r.ok = 1"
        if not self.include_failed:
            self.failed_left_out = db.execute("SELECT count(*) FROM rec WHERE ok = 0").fetchone()[0]
        if self.has_jobs_file:
            self.not_current = db.execute(
                "SELECT count(*) FROM rec r LEFT JOIN cur c ON c.job_id = r.job_id"
                f" WHERE c.job_id IS NULL{where.replace('WHERE', 'AND')}"
            ).fetchone()[0]
            self._query = (
                "SELECT r.job_id, r.body, c.body FROM rec r JOIN cur c ON c.job_id = r.job_id"
                f"{where} ORDER BY r.job_id"
            )
        else:
            self._query = f"SELECT r.job_id, r.body, NULL FROM rec r{where} ORDER BY r.job_id"

    def raw(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(job id, the projected record with the manifest's current name/meta/source applied)."""
        loads = orjson.loads
        verdicts, which = self.verdicts, self.reviewed
        self.review_left_out = 0
        # A cursor of its own, so two iterations never share state.
        for job_id, body, current in self._db.cursor().execute(self._query):
            review = verdicts.get(job_id)
            verdict = review.verdict if review is not None else None
            if (which is Reviewed.DEFAULT and verdict is Verdict.REJECTED) or (
                    which is Reviewed.ACCEPTED and verdict is not Verdict.ACCEPTED):
                self.review_left_out += 1
                continue
            d = loads(body)
            if d.get("status") == SUCCEEDED:
                d["verdict"] = verdict.value if verdict is not None else "unreviewed"
                d["verdict_note"] = review.note if review is not None else ""
            if current is not None:
                d.update(loads(current))
            if not isinstance(d.get("meta"), dict):
                d["meta"] = {}
            found = d.pop("vars", None)
            if isinstance(found, dict) and found:
                # Every var is a column, named by the var, like a meta field (a var and a meta
                # key never share a name: validation refuses it).
                d["meta"] = {**found, **d["meta"]}
            yield job_id, d

    def meta_schema(self) -> MetaSchema:
        schema = MetaSchema()
        for _, d in self.raw():
            schema.see(d["meta"])
        return schema

    def rows(self, meta_columns: dict[str, tuple[str, str]]) -> Iterator[Row]:
        for job_id, d in self.raw():
            yield self._row(job_id, d, meta_columns)

    def _row(self, job_id: str, d: dict[str, Any],
             meta_columns: dict[str, tuple[str, str]]) -> Row:
        cols: dict[str, Any] = {}
        for name in PROVENANCE:
            value = d.get(name)
            if name == "references":
                value = _references(value)
            elif name == "parents":  # chains (issue 22): the jobs and images it was made from
                value = [{"job_id": str(p.get("job_id")), "sha256": p.get("sha256")}
                         for p in value or () if isinstance(p, dict)]
            elif name in INT_COLUMNS:
                value = value if isinstance(value, int) and not isinstance(value, bool) else None
            elif name in FLOAT_COLUMNS:
                value = float(value) if isinstance(value, (int, float)) else None
            elif value is not None and not isinstance(value, str):
                value = str(value)
            cols[name] = value
        cols["job_id"] = job_id
        meta = d["meta"]
        for key, (column, kind) in meta_columns.items():
            cols[column] = coerce(meta.get(key), kind)
        cols["verdict"] = d.get("verdict")
        cols["verdict_note"] = d.get("verdict_note")
        if self.include_failed:
            ok = d.get("status") == SUCCEEDED
            cols["status"] = "succeeded" if ok else "failed"
            cols["error_kind"] = d.get("error_kind")
            cols["error_message"] = d.get("error_message")
        image = self._image(job_id, d)
        ext = image.suffix.lstrip(".").lower() if image is not None else ""
        return Row(job_id, cols, image, "jpg" if ext == "jpeg" else ext)

    def _image(self, job_id: str, d: dict[str, Any]) -> Path | None:
        if d.get("status") != SUCCEEDED:
            return None
        for rel in d.get("outputs") or ():
            if not isinstance(rel, str) or rel.endswith(".json"):
                continue
            # normpath, not resolve(): no system call per row, and enough to keep a ledger's
            # path inside the folder.
            norm = os.path.normpath(rel)
            if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
                log.warning("%s: output %r is outside the run folder; skipped", job_id, rel)
                continue
            return self.run_dir / norm
        return None


def column_types(meta_columns: dict[str, tuple[str, str]], *, include_failed: bool
                 ) -> dict[str, str]:
    """Every exported column in order, with its type ("string", "int", "float", "bool",
    "references"): id, name and prompt first, then the user's meta fields, then provenance."""
    def kind(name: str) -> str:
        if name in ("references", "parents"):
            return name
        return "int" if name in INT_COLUMNS else "float" if name in FLOAT_COLUMNS else "string"

    head = ("job_id", "name", "prompt")
    out = {name: kind(name) for name in head}
    out.update({column: k for column, k in meta_columns.values()})
    out.update({name: kind(name) for name in PROVENANCE if name not in head})
    out.update({name: "string" for name in REVIEW_COLUMNS})
    if include_failed:
        out.update({name: "string" for name in FAILED_COLUMNS})
    return out
