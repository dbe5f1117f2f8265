"""Durable writes: what makes a file or a rename survive a power cut.

``fsync_dir`` after a rename or a create, ``GroupSync`` for many appends sharing one fsync (a
group commit), and ``why`` for the one wording of an OS error every writer reports.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StorageError

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Make the renames and creations in ``path`` durable (a power cut could undo them)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory; nothing more to do
        log.debug("cannot fsync the directory %s: %s", path, exc)
    finally:
        os.close(fd)


class GroupSync:
    """fsync one file from a thread, with many writes per fsync (a group commit).

    Writers count their writes with :meth:`wrote`; :meth:`sync` waits until a given write is on
    disk. An fsync covers every write made before it started, so writers that are ready together
    share one, and those that write during it share the next.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd = -1
        self._written = 0
        self._synced = 0
        self._task: asyncio.Future[None] | None = None
        self.error: StorageError | None = None

    def wrote(self) -> int:
        self._written += 1
        return self._written

    @property
    def dirty(self) -> bool:
        return self._synced < self._written

    @property
    def busy(self) -> bool:
        """An fsync is running on :attr:`fd`: it must not be closed now."""
        return self._task is not None

    def mark_synced(self) -> None:
        """Everything written so far is on disk by other means (the file was rewritten)."""
        self._synced = self._written

    async def sync(self, upto: int | None = None) -> None:
        import asyncio  # here, not at the top: `status` and `report` never need it

        target = self._written if upto is None else upto
        while self._synced < target:
            if self.error is not None:
                raise self.error
            if self._task is None:
                self._task = asyncio.ensure_future(self._run())
            await asyncio.shield(self._task)

    def sync_soon(self) -> None:
        """Start a background fsync now if none is running (one per batch of writes)."""
        import asyncio

        if self._task is None and self.dirty and self.error is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        import asyncio

        target, fd = self._written, self.fd
        try:
            if fd >= 0:
                await asyncio.to_thread(os.fsync, fd)
            self._synced = max(self._synced, target)
        except OSError as exc:
            self.error = StorageError(f"cannot sync {self.name}: {why(exc)}")
            raise self.error from exc
        finally:
            self._task = None


def why(exc: OSError) -> str:
    """An OS error as a writer reports it: a full disk by that name, else its own text."""
    return "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)

