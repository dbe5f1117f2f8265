"""The store: puts a paid image on disk durably before anything counts it as done.

For each image: write the sidecar ``images/<id>.json`` (the record the ledger will get) to a
``.tmp`` name, fsync, rename; then the image ``images/<id>.<ext>`` the same way. Only then does
the pool append the ledger line. A crash before the image's rename leaves at most a sidecar
without its image (not adopted, the job runs again) and ``.tmp`` files (removed by
:meth:`ImageStore.prepare`); a crash between the image's rename and the ledger line leaves an
image with a sidecar and no ledger line, which :func:`adopt_orphans` adds to the ledger on the
next run so it is not paid for again.

The writes happen on one dedicated writer thread (:class:`_Writer`). ``save`` queues the job and
awaits a future; the thread takes everything queued at each wake-up, writes it, and resolves the
whole batch's futures with one ``call_soon_threadsafe``. For small images a thread hop per save
(or worse, per file operation) costs more CPU on the event loop than the writes themselves. Only
the fsyncs of a batch are spread over a few more threads, and only when the disk is slow to
answer them: they are waits, and a disk serves several at once.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .errors import StorageError
from .ledger import JobStatus, LedgerRecord

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
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

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.images_dir = run_dir / IMAGES_DIR
        self._images = str(self.images_dir)  # save() builds its paths as plain strings: cheaper
        self._writer: _Writer | None = None

    def prepare(self) -> None:
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create", self.images_dir, exc) from exc
        # A leftover .tmp is an image whose write never finished: it was never counted.
        for tmp in self.images_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def path_for(self, job_id: str, mime_type: str) -> Path:
        return self.images_dir / _image_name(job_id, mime_type)

    def relpath(self, job_id: str, mime_type: str) -> str:
        return f"{IMAGES_DIR}/{_image_name(job_id, mime_type)}"

    async def save(self, job_id: str, data: bytes, mime_type: str, *, sidecar: bytes) -> None:
        """Make the sidecar (the ledger line to come) and then the image durable.

        Raises :class:`StorageError` if either cannot be written. If the caller is cancelled
        meanwhile, the writer still finishes the save (a crash-safe state either way). A caller
        that keeps no reference to ``data`` while it waits lets a big image be freed as soon as
        it is in the page cache.
        """
        writer = self._writer
        if writer is None or not writer.alive:
            writer = self._writer = _Writer()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        base = os.path.join(self._images, job_id)
        image = f"{base}.{EXTENSIONS.get(mime_type, 'bin')}"
        writer.submit(_Save(f"{base}.json", sidecar, image, data, loop, future))
        del data, sidecar  # the writer drops them once written, before the fsyncs
        await future

    def close(self) -> None:
        """Finish the saves already queued, then stop the writer thread."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

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


@dataclass(slots=True, eq=False)
class _File:
    """One of a save's two files while its batch is written."""

    save: _Save
    path: str
    data: bytes
    fd: int = -1

    @property
    def tmp(self) -> str:
        return self.path + ".tmp"


_STOP = object()
# Saves written per wake-up at most (two open files each), so a high --concurrency cannot run
# the process out of file descriptors; what is left waits for the next round.
MAX_BATCH = 64
# fsync is a wait on the disk, not CPU: the disk (and ext4's journal) handles several at once,
# so when one fsync takes longer than SLOW_FSYNC_S the rest of a batch's fsyncs are spread over
# this many threads (the writer thread is one of them). Quicker ones stay on the writer thread:
# handing them over would cost more than it saves.
FSYNC_THREADS = 8
SLOW_FSYNC_S = 0.0001


class _Writer:
    """The thread that writes every save, a batch (all that is queued) per wake-up.

    Per batch: every file is written to its ``.tmp`` name; the files are fsync'd (spread over
    :data:`FSYNC_THREADS` threads); then per save the sidecar is renamed into place, then the
    image; then one ``call_soon_threadsafe`` hands every outcome back to the event loop. So
    when a file gets its final name its bytes are on disk, and an image never has its final
    name before its sidecar does.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None
        self._fsync_timings: deque[float] = deque(maxlen=16)
        self._thread = threading.Thread(target=self._run, name="batchgen-store", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, save: _Save) -> None:
        self._queue.put(save)

    def close(self) -> None:
        self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                batch, stop = self._take()
                if batch:
                    self._write_batch(batch)
                del batch  # not kept alive (with its images) while the thread waits
                if stop:
                    return
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _take(self) -> tuple[list[_Save], bool]:
        """Wait for a save, then take whatever else is queued (up to MAX_BATCH)."""
        batch: list[_Save] = []
        item = self._queue.get()
        while True:
            if item is _STOP:
                return batch, True  # what was queued before close() is still written
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _write_batch(self, saves: list[_Save]) -> None:
        try:
            _write_batch(saves, self._fsync_pool, self._fsync_timings)
        except BaseException as exc:  # a bug must fail the saves loudly, never leave them waiting
            log.error("the store's writer failed", exc_info=True)
            for save in saves:
                if save.error is None:
                    save.error = StorageError(f"cannot write {save.image_path}: {exc!r}")
            if not isinstance(exc, Exception):
                raise
        finally:
            outcomes = [(save.future, save.error) for save in saves]
            loop = saves[0].loop
            if all(save.loop is loop for save in saves):
                _resolve_soon(loop, outcomes)
            else:  # more than one event loop used the store: tell each its own
                for save, outcome in zip(saves, outcomes, strict=True):
                    _resolve_soon(save.loop, [outcome])

    def _fsync_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(FSYNC_THREADS - 1, thread_name_prefix="batchgen-fsync")
        return self._pool


def _write_batch(
    saves: list[_Save], pool: Callable[[], ThreadPoolExecutor], timings: deque[float]
) -> None:
    files: list[_File] = []
    for save in saves:
        files.append(_File(save, save.sidecar_path, save.sidecar))
        files.append(_File(save, save.image_path, save.data))
    try:
        for f in files:  # 1. every file to its tmp name
            if f.save.error is None:
                _write_tmp(f)
            f.data = b""
        for save in saves:
            # The bytes are in the page cache now: if the pool handed over its references
            # (it does), big images are freed here, not only once the fsyncs are done.
            save.data = save.sidecar = b""
        pending = [f for f in files if f.save.error is None]
        # 2. fsync. The first one here, timed; when fsyncs are quick (tmpfs, a disk with a safe
        # write cache) the rest follow here too, else they are spread over threads to overlap
        # the waits. The quickest of the last few batches decides: a single timing also counts
        # the wait for the GIL after the call.
        started = time.perf_counter()
        _fsync_files(pending[:1])
        pending = pending[1:]
        if pending:
            timings.append(time.perf_counter() - started)
        if len(pending) < 2 or min(timings) < SLOW_FSYNC_S:
            _fsync_files(pending)
        else:
            n = min(FSYNC_THREADS, len(pending))
            chunks = [pending[i::n] for i in range(n)]
            helpers: list[Future[None]] = []
            try:
                for chunk in chunks[1:]:
                    try:
                        helpers.append(pool().submit(_fsync_files, chunk))
                    except RuntimeError:  # the interpreter is shutting down: do it here
                        _fsync_files(chunk)
                _fsync_files(chunks[0])
            finally:
                wait(helpers)  # no fd is closed while another thread may still fsync it
            for fut in helpers:
                fut.result()
        for f in files:
            _close(f)
        for f in files:  # 3. per save: sidecar, then image, to their final names
            if f.save.error is None:
                try:
                    os.replace(f.tmp, f.path)
                except OSError as exc:
                    f.save.error = _storage_error("write", f.path, exc)
    finally:
        for f in files:
            _close(f)
            if f.save.error is not None:
                try:
                    os.unlink(f.tmp)
                except FileNotFoundError:
                    pass
                except OSError:
                    log.debug("could not remove %s", f.tmp)


def _write_tmp(f: _File) -> None:
    try:
        f.fd = os.open(f.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
        view = memoryview(f.data)
        while view:
            view = view[os.write(f.fd, view) :]
    except OSError as exc:
        f.save.error = _storage_error("write", f.path, exc)


def _fsync_files(files: list[_File]) -> None:
    for f in files:
        if f.save.error is None:
            try:
                _fsync(f.fd)
            except OSError as exc:
                f.save.error = _storage_error("write", f.path, exc)


def _close(f: _File) -> None:
    if f.fd >= 0:
        fd, f.fd = f.fd, -1
        try:
            os.close(fd)
        except OSError as exc:
            if f.save.error is None:
                f.save.error = _storage_error("write", f.path, exc)


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


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def adopt_orphans(run_dir: Path, done: set[str]) -> list[LedgerRecord]:
    """Images on disk with a sidecar but no succeeded ledger line: paid for, so keep them."""
    images_dir = run_dir / IMAGES_DIR
    adopted: list[LedgerRecord] = []
    if not images_dir.is_dir():
        return adopted
    for entry in os.scandir(images_dir):
        if not entry.name.endswith(".json"):
            continue
        job_id = entry.name[: -len(".json")]
        if job_id in done:
            continue
        try:
            data: dict[str, Any] = orjson.loads(Path(entry.path).read_bytes())
            record = LedgerRecord.from_dict(data)
        except (OSError, orjson.JSONDecodeError, KeyError, ValueError, TypeError):
            log.warning("%s: unreadable sidecar, ignored", entry.path)
            continue
        if record.status is not JobStatus.SUCCEEDED or not record.outputs:
            continue
        if all((run_dir / out).is_file() for out in record.outputs):
            adopted.append(record.__class__.from_dict({**record.to_dict(), "adopted": True}))
    return adopted
