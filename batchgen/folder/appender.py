"""Appending to the ledger: :class:`LedgerWriter`, and the repair of a torn last line.

Lines are appended from one place (:class:`LedgerWriter`, driven from the event loop only), so
they never interleave. While a run writes, the ledger is fsync'd in the background once per
batch of lines (:meth:`LedgerWriter.sync_soon`), so a power cut loses at most the lines of the
last batch. The format of a line, and reading them back, is :mod:`.ledger`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from ..errors import StorageError
from .durable import GroupSync, why
from .ledger import LedgerRecord

log = logging.getLogger(__name__)


class LedgerWriter:
    """Appends records; each line reaches the OS, unbuffered, before ``append`` returns.

    Unbuffered on purpose: after a failed write (a full disk) a buffer would keep the unwritten
    tail and glue it onto the next record. Instead a failed line is cut off again, so the file
    only ever holds whole lines. A torn tail left by an earlier crash is cut back the same way.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._group = GroupSync(str(path))

    def open(self) -> None:
        try:
            repair_tail(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open the ledger {self.path}: {exc.strerror}") from exc
        self._group.fd = self._fd

    def sync_soon(self) -> None:
        """fsync what was appended, in the background, one fsync per batch of lines. A failed
        background fsync is raised by the next :meth:`append_line`."""
        self._group.sync_soon()

    def append(self, record: LedgerRecord) -> None:
        self.append_line(record.to_line())

    def append_line(self, data: bytes) -> None:
        """Append one serialised record (``LedgerRecord.to_line``)."""
        if self._fd is None:
            self.open()
        assert self._fd is not None
        if self._group.error is not None:
            raise self._group.error
        line = memoryview(data)
        size_before = os.fstat(self._fd).st_size
        try:
            while line:
                written = os.write(self._fd, line)
                line = line[written:]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size_before)
            except OSError:
                log.debug("could not cut the failed line off %s", self.path)
            raise StorageError(f"cannot write the ledger {self.path}: {why(exc)}") from exc
        self._group.wrote()

    def sync(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise StorageError(f"cannot sync the ledger {self.path}: {why(exc)}") from exc

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None
                self._group.fd = -1


def repair_tail(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        # Walk back to the last newline; 64 KiB blocks keep this cheap on a long ledger.
        pos = size
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            idx = block.rfind(b"\n")
            if idx >= 0:
                cut = pos + idx + 1
                break
        else:
            cut = 0
        fh.seek(cut)
        if _is_record(fh.read(size - cut)):
            # A whole record that only lacks its newline (an editor, a copy): keep it.
            fh.seek(size)
            fh.write(b"\n")
            return
        log.warning("%s: dropping a torn last line (%d bytes)", path, size - cut)
        fh.truncate(cut)


def _is_record(raw: bytes) -> bool:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "job_id" in obj and "status" in obj
