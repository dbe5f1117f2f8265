"""The store: puts a paid image on disk durably before anything counts it as done.

For each image: the sidecar ``images/<xx>/<id>.json`` (the record the ledger will get) and the
image ``images/<xx>/<id>.<ext>`` (:mod:`batchgen.folder.layout`) are written to ``.tmp`` names
and fsync'd; then the sidecar is renamed into place, then the image, then the directory is
fsync'd once per commit so the renames survive a power cut. Only then does the pool append the
ledger line. So a file gets its final name only once its bytes are on disk, and an image only
after its sidecar has. A crash before the renames leaves ``.tmp`` files: a complete pair (the
sidecar's sha256 matches the image's bytes) is finished and adopted (:mod:`.recovery`), anything
else is removed by :meth:`ImageStore.prepare`; a crash between the image's rename and the ledger
line leaves an image with a sidecar and no ledger line, which the next run adopts into the
ledger so it is not paid for again.

One writer thread (:class:`_Writer`) writes each save's files as soon as it sees them, commits
all written so far (fsync, rename) and resolves the commit's futures with one
``call_soon_threadsafe``: a thread hop per save costs the loop more than small writes do. Only
the fsyncs (waits a disk serves several at once) go to more threads, when the disk is slow.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StorageError
from ..folder.durable import fsync_dir
from ..folder.layout import IMAGES_DIR, image_dirs, subdir
from .thumbs import Thumbnailer

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

# Module level so the benchmark's diagnostic run can stub it out (bench/timed_batchgen.py).
_fsync = os.fsync
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _storage_error(action: str, path: Path | str, exc: OSError) -> StorageError:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable"
    else:
        why = exc.strerror or str(exc)
    return StorageError(f"cannot {action} {path}: {why}")


class ImageStore:
    """The run folder's ``images/``. :meth:`close` (or ``async with``) stops the writer thread;
    a store that is never closed still shuts down cleanly, its thread is a daemon."""

    def __init__(self, run_dir: Path, *, thumbnails: bool = False) -> None:
        self.run_dir = run_dir
        self.images_dir = run_dir / IMAGES_DIR
        self._images = str(self.images_dir)  # save() builds its paths as plain strings: cheaper
        self._writer: _Writer | None = None
        # The gallery's thumbnails, made as images land (store/thumbs.py), when asked for.
        self.thumbnailer = Thumbnailer(run_dir) if thumbnails else None

    def prepare(self) -> None:
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create", self.images_dir, exc) from exc
        # A leftover .tmp is an image whose write never finished: it was never counted.
        for folder in image_dirs(self.images_dir):
            for tmp in folder.glob("*.tmp"):
                tmp.unlink(missing_ok=True)

    def path_for(self, job_id: str, mime_type: str) -> Path:
        return self.images_dir / subdir(job_id) / _image_name(job_id, mime_type)

    def relpath(self, job_id: str, mime_type: str) -> str:
        return f"{IMAGES_DIR}/{subdir(job_id)}/{_image_name(job_id, mime_type)}"

    async def save(self, job_id: str, data: bytes, mime_type: str, *, sidecar: bytes) -> None:
        """Make the sidecar (the ledger line to come) and then the image durable.

        Raises :class:`StorageError` if either cannot be written. If the caller is cancelled
        meanwhile, the writer still finishes the save (a crash-safe state either way). A caller
        that keeps no reference to ``data`` while it waits lets a big image be freed as soon as
        it is in the page cache.
        """
        import asyncio  # here, not at the top: `status` and `report` never need it

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        folder = os.path.join(self._images, subdir(job_id))  # made by the writer if need be
        image = os.path.join(folder, _image_name(job_id, mime_type))
        sidecar_path = os.path.join(folder, f"{job_id}.json")
        save = _Save(sidecar_path, sidecar, image, data, loop, future)
        del data, sidecar  # the writer drops them once written, before the fsyncs
        while self._writer is None or not self._writer.submit(save):
            self._writer = _Writer(self.thumbnailer)
        del save
        await future

    def close(self) -> None:
        """Finish the saves queued, stop the writer; the thumbnailer gets its short budget."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        thumbs, self.thumbnailer = self.thumbnailer, None
        if thumbs is not None:
            thumbs.close()

    async def __aenter__(self) -> ImageStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _image_name(job_id: str, mime_type: str) -> str:
    return f"{job_id}.{EXTENSIONS.get(mime_type, 'bin')}"


@dataclass(slots=True, eq=False)
class _Save:
    sidecar_path: str
    sidecar: bytes
    image_path: str
    data: bytes
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    error: BaseException | None = None
    sidecar_fd: int = -1
    image_fd: int = -1
    new_folder: bool = False  # its subfolder was made for it: images/ is fsync'd in its commit

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc


_STOP = object()  # from close(): finish what is queued, then end
_SYNCED = object()  # from an fsync thread: one part of the commit in progress is done
# Saves with tmp files open at once at most (two each): no running out of file descriptors.
MAX_OPEN_SAVES = 64
# fsync is a wait on the disk, not CPU, and a disk (and ext4's journal) serves several at once.
# So while fsyncs are slow (the quickest of the last few took SLOW_FSYNC_S or more) a commit's
# fsyncs are spread over this many threads; quick ones (tmpfs) stay on the writer thread.
FSYNC_THREADS = 8
SLOW_FSYNC_S = 0.0001


class _Writer:
    """The thread that makes saves durable, in commits of everything that has come in.

    A save's two files are written to their ``.tmp`` names as soon as the thread sees the save
    (after which the image bytes are dropped: a big image waits for its fsync in the page cache,
    not in memory). A commit then fsyncs every file written so far, renames each save's sidecar
    and then its image into place, and hands the outcomes back to the event loop with one
    ``call_soon_threadsafe``. While one commit's fsyncs run on other threads, the next saves
    are already being written. So a file has its final name only once its bytes are on disk,
    and an image never has its final name before its sidecar does.
    """

    def __init__(self, thumbs: Thumbnailer | None = None) -> None:
        self._thumbs = thumbs
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None
        self._fsync_s: deque[float] = deque(maxlen=16)  # appended to from several threads
        self._lock = threading.Lock()
        self._broken = False
        self._thread = threading.Thread(target=self._run, name="batchgen-store", daemon=True)
        self._thread.start()

    def submit(self, save: _Save) -> bool:
        """Queue a save; False if this writer broke down (the caller starts another)."""
        with self._lock:
            if self._broken:
                return False
            self._queue.put(save)
            return True

    def close(self) -> None:
        self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        waiting: deque[_Save] = deque()  # taken from the queue, files not written yet
        written: list[_Save] = []  # tmp files written and open, for the next commit
        commit: list[_Save] = []  # being fsync'd on other threads
        parts_left = 0
        stopping = False
        try:
            while True:
                free = not commit
                if stopping and free and not written and not waiting:
                    return
                # Block only when there is nothing to do until a save or an fsync comes in.
                idle = free and not written and not waiting  # what thumbnails wait for
                for item in self._take(block=not (free and (written or waiting)), idle=idle):
                    if item is _STOP:
                        stopping = True
                    elif item is _SYNCED:
                        parts_left -= 1
                    else:
                        waiting.append(item)
                while waiting and len(written) < MAX_OPEN_SAVES:
                    written.append(waiting.popleft())
                    _write_tmp_files(written[-1])
                if commit and parts_left == 0:
                    self._finish(commit)
                    commit = []
                if not commit and written:
                    commit, written = written, []
                    parts_left = self._sync(commit)
                    if parts_left == 0:
                        self._finish(commit)
                        commit = []
        except BaseException as exc:  # a bug: fail every save it holds, never leave one waiting
            log.error("the store's writer failed", exc_info=True)
            with self._lock:
                self._broken = True  # from now on save() starts a new writer
            while parts_left > 0:  # no fd is closed while an fsync thread may still use it
                item = self._queue.get()
                if item is _SYNCED:
                    parts_left -= 1
                elif item is not _STOP:
                    waiting.append(item)
            waiting.extend(i for i in self._take(block=False) if isinstance(i, _Save))
            for group in (commit, written, list(waiting)):
                if group:
                    for save in group:
                        save.fail(StorageError(f"cannot write {save.image_path}: {exc!r}"))
                    _finish(group)
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _finish(self, commit: list[_Save]) -> None:
        _finish(commit, self._sync_dirs)
        if self._thumbs is not None:
            self._thumbs.add([save.image_path for save in commit if save.error is None])

    def _sync_dirs(self, folders: list[str]) -> None:
        """A commit's folders fsync'd: a commit of 64 saves touches ~60 of the 256 subfolders,
        and one after the other those waits were most of the writer's time with small images
        (issue 25), so while fsyncs are slow they are spread over the fsync threads too."""
        timings = self._fsync_s
        if len(folders) > 1 and timings and min(timings) >= SLOW_FSYNC_S:
            try:
                list(self._fsync_pool().map(_fsync_dir, folders))
                return
            except RuntimeError:  # the interpreter is shutting down: do it here
                pass
        for folder in folders:
            _fsync_dir(folder)

    def _take(self, *, block: bool, idle: bool = False) -> list[Any]:
        if quiet := (self._thumbs if block and idle else None):
            quiet.store_idle(True)  # thumbnails wait for an idle writer (store/thumbs.py)
        items = [self._queue.get()] if block else []
        if quiet:
            quiet.store_idle(False)
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _sync(self, commit: list[_Save]) -> int:
        """fsync every open file of the commit: here if fsyncs are quick, else on the fsync
        threads, which report each part's end with :data:`_SYNCED`. How many parts went there."""
        fds = [(s, fd) for s in commit if s.error is None for fd in (s.sidecar_fd, s.image_fd)]
        timings = self._fsync_s  # no fsync thread is busy now, so nobody appends meanwhile
        if not fds or not timings or min(timings) < SLOW_FSYNC_S:
            _fsync_all(fds, timings)
            return 0
        n = min(FSYNC_THREADS, len(fds))
        sent = 0
        for part in (fds[i::n] for i in range(n)):
            try:
                self._fsync_pool().submit(self._fsync_part, part)
                sent += 1
            except RuntimeError:  # the interpreter is shutting down: do it here
                _fsync_all(part, timings)
        return sent

    def _fsync_part(self, fds: list[tuple[_Save, int]]) -> None:
        try:
            _fsync_all(fds, self._fsync_s)
        finally:
            self._queue.put(_SYNCED)

    def _fsync_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="batchgen-fsync")
        return self._pool


def _write_tmp_files(save: _Save) -> None:
    """Step 1: both files to their tmp names, left open for the commit's fsync."""
    try:
        save.sidecar_fd = _write_tmp(save.sidecar_path, save.sidecar, save)
        save.image_fd = _write_tmp(save.image_path, save.data, save)
    except StorageError as exc:
        save.fail(exc)
    except Exception as exc:  # a bug must fail the save loudly, never leave it waiting
        log.error("the store's writer failed on %s", save.image_path, exc_info=True)
        save.fail(StorageError(f"cannot write {save.image_path}: {exc!r}"))
    # In the page cache now: a big image is freed here rather than after the fsyncs.
    save.data = save.sidecar = b""


def _write_tmp(path: str, data: bytes, save: _Save) -> int:
    tmp = path + ".tmp"
    fd = -1
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC
    try:
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            # The first file of its subfolder: its entry in images/ is fsync'd by the commit (an
            # fsync here for each of 256 new subfolders held up every save behind it, issue 25).
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            save.new_folder = True
            fd = os.open(tmp, flags, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return fd
    except OSError as exc:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        _remove(tmp)
        raise _storage_error("write", path, exc) from exc


def _fsync_all(fds: list[tuple[_Save, int]], timings: deque[float]) -> None:
    """Step 2 (for some of a commit's files): fsync, timed."""
    for save, fd in fds:
        if save.error is not None:
            continue
        started = time.perf_counter()
        try:
            _fsync(fd)
        except OSError as exc:
            path = save.sidecar_path if fd == save.sidecar_fd else save.image_path
            save.fail(_storage_error("write", path, exc))
        except Exception as exc:  # a bug must fail the save loudly, never leave it waiting
            log.error("the store's fsync failed on %s", save.image_path, exc_info=True)
            save.fail(StorageError(f"cannot write {save.image_path}: {exc!r}"))
        else:
            timings.append(time.perf_counter() - started)


def _finish(commit: list[_Save], sync_dirs: Callable[[list[str]], None] | None = None) -> None:
    """Step 3: per save, the sidecar and then the image to their final names, the folders
    fsync'd (``sync_dirs``, else one by one); then one ``call_soon_threadsafe`` per event loop
    with every outcome."""
    try:
        for save in commit:
            for attr, path in (("sidecar_fd", save.sidecar_path), ("image_fd", save.image_path)):
                fd = getattr(save, attr)
                if fd < 0:
                    continue
                setattr(save, attr, -1)
                try:
                    os.close(fd)
                except OSError as exc:
                    save.fail(_storage_error("write", path, exc))
            for path in (save.sidecar_path, save.image_path):
                if save.error is not None:
                    _remove(path + ".tmp")
                    continue
                try:
                    os.replace(path + ".tmp", path)
                except OSError as exc:
                    save.fail(_storage_error("write", path, exc))
                    _remove(path + ".tmp")
        # One directory fsync per commit: the renames above (and new subfolders' entries in
        # images/) survive a power cut before any ledger line counts these images as done.
        dirs = {os.path.dirname(save.image_path) for save in commit}
        dirs.update(os.path.dirname(os.path.dirname(s.image_path)) for s in commit if s.new_folder)
        folders = sorted(dirs)
        if sync_dirs is not None:
            sync_dirs(folders)
        else:
            for folder in folders:
                _fsync_dir(folder)
    except Exception as exc:  # a bug must fail the saves loudly, never leave them waiting
        log.error("the store's writer failed", exc_info=True)
        for save in commit:
            save.fail(StorageError(f"cannot write {save.image_path}: {exc!r}"))
    finally:
        outcomes = [(save.future, save.error) for save in commit]
        loop = commit[0].loop
        if all(save.loop is loop for save in commit):
            _resolve_soon(loop, outcomes)
        else:  # more than one event loop used the store: tell each its own
            for save, outcome in zip(commit, outcomes, strict=True):
                _resolve_soon(save.loop, [outcome])


def _fsync_dir(path: str) -> None:
    fsync_dir(Path(path))


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    except OSError:
        log.debug("could not remove %s", tmp)


def _resolve_soon(
    loop: asyncio.AbstractEventLoop,
    outcomes: list[tuple[asyncio.Future[None], BaseException | None]],
) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, outcomes)
    except RuntimeError:
        # The loop is closed: its run was cancelled and nobody waits for these saves any more.
        log.debug("event loop closed; %d finished save(s) not reported", len(outcomes))


def _resolve(outcomes: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, exc in outcomes:
        if future.done():  # the awaiting task was cancelled
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


