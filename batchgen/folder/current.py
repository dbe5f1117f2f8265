"""``DIR/jobs.jsonl``: the jobs the manifest holds now, one JSON line per job.

The ledger says what was made, and when; it keeps a line for every job ever run in the folder,
including jobs whose manifest row has since been edited away. This file says what the manifest
holds *now*: it is rewritten at planning time by every ``run``, so

- metadata edited in the manifest (which changes no job id, and so re-runs nothing) reaches
  exports and reports at once: they read ``name``, ``source`` and ``meta`` from here;
- a ledger job whose id is not in here is superseded (its row was edited or removed).

One line per job, in manifest order, streamed in and out: a million-job manifest is a few hundred
MB on disk and flat in memory. The file is written aside and renamed, so a reader sees the last
whole file or the new one, never half of one. Format (ARCHITECTURE.md, "The run folder"):

    {"job_id": ..., "name": ..., "source": "manifest.yaml:12", "meta": {...}, "vars": {...},
     "prompt": ..., "model": ..., "image_size": ..., "aspect_ratio": ..., "seed": ...,
     "temperature": ..., "output_text": ..., "sample": ...,
     "references": [{"path": ..., "sha256": ...}], "request": {...}}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from .durable import atomic_write, cannot_write, commit_tmp
from .ledger import check_job_id

if TYPE_CHECKING:
    from ..spec import JobSpec

log = logging.getLogger(__name__)

CURRENT_NAME = "jobs.jsonl"
_WRITE_BUFFER = 1 << 20


def references_of(spec: JobSpec) -> list[dict[str, str | None]]:
    """Each reference as the manifest named it and the sha256 of the content that was sent."""
    return [{"path": r.source, "sha256": r.sha256 or None} for r in spec.references]


def request_of(spec: JobSpec) -> dict[str, Any]:
    """The optional request fields the job set (none: ``{}``), under their manifest names."""
    extras = spec.extras
    if extras is None:
        return {}
    out: dict[str, Any] = {}
    if extras.system_instruction is not None:
        out["system_instruction"] = extras.system_instruction
    if extras.safety_settings:
        out["safety_settings"] = [
            {"category": c, "threshold": t} for c, t in extras.safety_settings
        ]
    if extras.google_search:
        out["google_search"] = True
    return out


def job_entry(spec: JobSpec) -> dict[str, Any]:
    """The job's provenance: who it is to the user and every setting it is generated with.

    The same keys go into every ledger line and sidecar (:mod:`batchgen.pool`), so a consumer
    reads one shape from either. Written out flat: it runs once per job of every run's plan.
    """
    line = spec.source_line
    meta = spec.meta
    return {
        "job_id": spec.job_id,
        "name": spec.user_id,
        "source": f"{spec.source_file}:{line}" if line else spec.source_file,
        "meta": dict(meta) if meta else {},
        "vars": dict(spec.vars) if spec.vars else {},
        "prompt": spec.prompt,
        "model": spec.model,
        "image_size": spec.image_size,
        "aspect_ratio": spec.aspect_ratio,
        "seed": spec.seed,
        "temperature": spec.temperature,
        "output_text": spec.output_text,
        "sample": spec.sample,
        "references": references_of(spec) if spec.references else [],
        "request": request_of(spec) if spec.extras is not None else {},
    }


def current_path(folder: Path) -> Path:
    return folder / CURRENT_NAME


def write_current(folder: Path, jobs: Iterable[JobSpec]) -> int:
    """Replace ``DIR/jobs.jsonl`` with ``jobs``; returns how many were written.

    Written to a ``.tmp`` name, fsync'd and renamed, so a crash leaves the previous file whole.
    """
    return _write_entries(folder, map(job_entry, jobs))


def _write_entries(folder: Path, entries: Iterable[dict[str, Any]]) -> int:
    dumps = orjson.dumps
    n = 0
    with atomic_write(current_path(folder), buffering=_WRITE_BUFFER) as fh:
        write = fh.write
        for entry in entries:
            write(dumps(entry))
            write(b"\n")
            n += 1
    return n


class CurrentWriter:
    """Writes ``jobs.jsonl`` in the manifest's validation pass instead of a pass of its own.

    A second pass over a million-row manifest would cost as much again as planning; writing the
    entries as the jobs are validated costs only their JSON. Until the folder is locked (a first
    run makes it only once the input has passed) the entries go to an anonymous temporary file,
    copied in by :meth:`commit`; a folder locked before validation gets ``jobs.jsonl.tmp`` at
    once. If the spool cannot be written (a full temp disk), :meth:`commit` falls back to a pass of
    its own over ``jobs``.
    """

    def __init__(self, folder: Path | None) -> None:
        self._tmp = current_path(folder).with_name(CURRENT_NAME + ".tmp") if folder else None
        self._fh: IO[bytes] | None = None
        self._failed = False
        # Held open across the validation pass, closed by commit() or discard().
        try:
            if self._tmp is not None:
                self._fh = open(self._tmp, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115
            else:
                import tempfile  # here, not at the top: `status` starts without it

                self._fh = tempfile.TemporaryFile(buffering=_WRITE_BUFFER)  # noqa: SIM115
        except OSError as exc:
            log.debug("cannot spool %s: %s", CURRENT_NAME, exc)
            self._failed = True

    def add(self, spec: JobSpec) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write(orjson.dumps(job_entry(spec)) + b"\n")
        except OSError as exc:
            log.debug("cannot spool %s: %s", CURRENT_NAME, exc)
            self._failed = True
            self.discard()

    def commit(self, folder: Path, jobs: Callable[[], Iterable[JobSpec]]) -> None:
        """Put the spooled entries in place as ``folder/jobs.jsonl`` (or write ``jobs()``)."""
        fh, self._fh = self._fh, None
        if fh is None or self._failed:
            self.discard()
            write_current(folder, jobs())
            return
        path = current_path(folder)
        if self._tmp is None:  # spooled aside: copy it into the folder
            import shutil  # here, not at the top: `status` starts without it

            with fh, atomic_write(path) as out:
                fh.seek(0)
                shutil.copyfileobj(fh, out, _WRITE_BUFFER)
            return
        try:
            commit_tmp(fh, self._tmp, path)
        except OSError as exc:
            raise cannot_write(path, exc) from exc

    def discard(self) -> None:
        """Drop what was spooled (the input did not pass, or the spool failed)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
        if self._tmp is not None:
            try:
                self._tmp.unlink(missing_ok=True)
            except OSError:
                log.debug("could not remove %s", self._tmp)


def merge_current(sources: list[Path], out: Path) -> bool:
    """``out/jobs.jsonl`` as the union of the inputs' (the first line per job id wins, in input
    order); False, and no file, if an input has none: its jobs would then look superseded."""
    if not sources or not all(has_current(src) for src in sources):
        current_path(out).unlink(missing_ok=True)
        return False
    seen: set[str] = set()

    def union() -> Iterator[dict[str, Any]]:
        for src in sources:
            for entry in iter_current(src):
                if entry["job_id"] not in seen:
                    seen.add(entry["job_id"])
                    yield entry

    _write_entries(out, union())
    return True


def has_current(folder: Path) -> bool:
    """Whether the folder has the file: a folder from before it (or never run) has not."""
    return current_path(folder).is_file()


def iter_current(folder: Path) -> Iterator[dict[str, Any]]:
    """Every job of the manifest as of the last run, in manifest order; nothing if no file.

    A line that is not a JSON object with a ``job_id`` is skipped with a warning.
    """
    path = current_path(folder)
    try:
        fh = path.open("rb", buffering=1 << 16)
    except FileNotFoundError:
        return
    loads = orjson.loads
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                obj = loads(raw)
                if type(obj) is dict and isinstance(obj.get("job_id"), str):
                    check_job_id(path, lineno, obj["job_id"])  # it names files in an export
                    yield obj
                    continue
            except orjson.JSONDecodeError:
                pass
            if raw.strip():
                log.warning("%s:%d: ignoring a malformed line", path, lineno)


def current_ids(folder: Path) -> set[str] | None:
    """The job ids the manifest holds now; None for a folder without the file (all current)."""
    if not has_current(folder):
        return None
    return {entry["job_id"] for entry in iter_current(folder)}
