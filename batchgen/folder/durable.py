"""Durable writes: what makes a file or a rename survive a power cut.

``atomic_write`` and ``replace_atomically`` for a file replaced whole (tmp in the same folder,
fsync, rename, fsync of the folder), ``commit_tmp`` for a tmp file that was written over a while
through a handle held open, ``fsync_dir`` after a rename or a create, ``GroupSync`` for many
appends sharing one fsync (a group commit), and ``why`` for the one wording of an OS error every
writer reports.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

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


def commit_tmp(fh: IO[bytes], tmp: Path, path: Path) -> None:
    """Put ``tmp``, written through ``fh``, in place as ``path``: all of it or none of it.

    Its bytes reach the disk before the rename, and the rename before this returns, so a power
    cut leaves the old file or the new one, never a torn or empty one. ``fh`` is closed; on a
    failure ``tmp`` is removed and the OS error raised as it is, for the caller to word.
    """
    try:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
    except BaseException:
        fh.close()
        _remove(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(
    path: Path, *, tmp: Path | None = None, buffering: int = -1, parents: bool = False
) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through, put in place by :func:`commit_tmp` when the
    block ends; an OS error on the way is a :class:`StorageError` ("cannot write PATH: why").

    ``tmp`` is ``PATH.tmp`` unless named; ``parents`` creates the folder first. A block that
    raises leaves ``path`` as it was and no tmp behind.
    """
    tmp = tmp if tmp is not None else path.with_name(path.name + ".tmp")
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(tmp, "wb", buffering=buffering)  # noqa: SIM115 (closed by commit_tmp)
        try:
            yield fh
        except BaseException:
            fh.close()
            _remove(tmp)
            raise
        commit_tmp(fh, tmp, path)
    except OSError as exc:
        raise cannot_write(path, exc) from exc


def replace_atomically(path: Path, data: bytes, *, parents: bool = False) -> None:
    """Replace ``path`` with ``data``, durably and all at once (see :func:`atomic_write`)."""
    with atomic_write(path, parents=parents) as fh:
        fh.write(data)


def cannot_write(path: Path, exc: OSError) -> StorageError:
    """The one wording of a failed write of ``path``."""
    return StorageError(f"cannot write {path}: {why(exc)}")


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        log.debug("could not remove %s", tmp)


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

