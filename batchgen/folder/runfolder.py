"""The run folder itself: its lock and its ``run.json``.

An flock held for the whole run keeps two runs off one folder (they would pay for everything
twice); ``run.json`` keeps the settings and the manifest's hash so a resumed run can say what
changed. Light on purpose: ``status`` imports it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError, StorageError
from .durable import replace_atomically
from .layout import LOCK_FILE, RUN_FILE, now_iso, read_run_meta
from .ledger import LEDGER_NAME


class RunFolder:
    """``DIR/``: run.json, ledger.jsonl and images/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ledger_path = path / LEDGER_NAME
        self.run_file = path / RUN_FILE

    def read_meta(self) -> dict[str, Any]:
        return read_run_meta(self.path)

    def write_meta(self, meta: dict[str, Any]) -> None:
        # Synced: written a few times a run, and a run.json a power cut left empty would lose
        # the settings and the manifest hash a resumed run compares against.
        meta_bytes = orjson.dumps(meta, option=orjson.OPT_INDENT_2)
        replace_atomically(self.run_file, meta_bytes, parents=True)

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


def read_meta(run_dir: Path) -> dict[str, Any]:
    """``run.json``; raises :class:`InputError` when the folder is no run folder at all."""
    meta = read_run_meta(run_dir)
    if not meta and not (run_dir / LEDGER_NAME).exists():
        raise InputError(f"{run_dir}: not a batchgen run folder (no run.json or ledger.jsonl)")
    return meta

