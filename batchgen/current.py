"""Which jobs the manifest holds now: ``DIR/jobs.jsonl``, written at planning time.

A job whose row was edited gets a new id; its old image stays in ``images/`` and its ledger
line stays true. Without a record of the manifest's current jobs, ``status`` counted both
(6 succeeded for a 5-row manifest) and the gallery showed both unmarked. ``jobs.jsonl`` is one
JSON object per current job, ``{"job_id": ...}``, written while the manifest is
validated (so it costs no pass of its own) into a temporary file, and moved into the run folder
atomically once the run holds the folder's lock. It streams: a million rows are a file, not a
list in memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from .errors import StorageError

CURRENT_NAME = "jobs.jsonl"
_BATCH = 4096


def current_path(folder: Path) -> Path:
    return folder / CURRENT_NAME


def iter_current(folder: Path) -> Iterator[dict[str, Any]]:
    """The current jobs of a run folder, one dict each; nothing when it has no ``jobs.jsonl``."""
    try:
        fh = current_path(folder).open("rb", buffering=1 << 16)
    except FileNotFoundError:
        return
    with fh:
        for raw in fh:
            if raw.strip():
                try:
                    d = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # a torn line cannot happen (atomic replace); be lenient anyway
                if isinstance(d, dict) and "job_id" in d:
                    yield d


def current_ids(folder: Path) -> set[str] | None:
    """The ids of the current jobs, or None for a folder written before ``jobs.jsonl`` existed
    (then every job in the ledger counts as current, as it always did)."""
    if not current_path(folder).exists():
        return None
    return {str(d["job_id"]) for d in iter_current(folder)}


class CurrentWriter:
    """Collects the manifest's jobs while it is validated; :meth:`commit` puts the file in place.

    The temporary file lives in the system's temp folder because the run folder may not exist
    yet (bad input must create nothing in it); :meth:`commit` copies it next to its final name
    first, so the replace itself is atomic.
    """

    def __init__(self) -> None:
        self._fh: IO[bytes] | None = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in commit)
            prefix="batchgen-jobs-", suffix=".jsonl", delete=False
        )
        self._lines: list[str] = []
        self.count = 0

    def add(self, job_id: str) -> None:
        # Formatted, not orjson.dumps: a job id is made of [A-Za-z0-9._-] only (sanitised), so
        # it needs no escaping, and this runs once per job of a million-row manifest.
        lines = self._lines
        lines.append(f'{{"job_id":"{job_id}"}}\n')
        if len(lines) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._fh is not None and self._lines:
            self._fh.write("".join(self._lines).encode())
            self.count += len(self._lines)
        self._lines.clear()

    def commit(self, folder: Path) -> None:
        if self._fh is None:
            return
        self._flush()
        fh, self._fh = self._fh, None
        final = current_path(folder)
        tmp = final.with_name(final.name + ".tmp")
        try:
            fh.flush()
            fh.close()
            shutil.copyfile(fh.name, tmp)
            with open(tmp, "rb+") as out:
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            raise StorageError(f"cannot write {final}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(fh.name)

    def discard(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()
            with contextlib.suppress(OSError):
                os.unlink(fh.name)


def manifest_key(manifest: Path) -> str:
    """The manifest's path as a run folder remembers it: absolute, symlinks resolved."""
    return str(manifest.resolve())


def owner_problem(meta: dict[str, Any], manifest: Path, folder: Path) -> str | None:
    """Why ``manifest`` may not run in ``folder``, or None when the folder is free or its own.

    A folder belongs to the manifest path that first ran in it; that file's content may change
    (edits are what resuming is for). ``train/prompts.csv`` and ``val/prompts.csv`` both default
    to ``jobs/prompts``: mixing them silently counted both runs' jobs and spend as one.
    Folders from before this was recorded (no ``manifest_path``) are taken as they are.
    """
    owner = meta.get("manifest_path")
    if not owner or owner == manifest_key(manifest):
        return None
    return (
        f"{folder} belongs to another manifest, {owner}; {manifest} is a different file. "
        f"Give it a folder of its own, e.g. --out {folder.parent / suggested_name(manifest)}"
    )


def suggested_name(manifest: Path) -> str:
    """``val/prompts.csv`` -> ``val-prompts``: the folder name that tells it apart."""
    parent = manifest.resolve().parent.name
    return f"{parent}-{manifest.stem}" if parent else f"{manifest.stem}-2"
