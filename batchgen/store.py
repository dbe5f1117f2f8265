"""The store: puts a paid image on disk durably before anything counts it as done.

For each image: write ``images/<id>.<ext>.tmp``, fsync, write the sidecar ``images/<id>.json``
(the record the ledger will get) the same way, then rename the image into place. Only then does
the pool append the ledger line. A crash between the rename and the ledger line leaves an image
with a sidecar and no ledger line; :func:`adopt_orphans` adds those to the ledger on the next run
so they are not paid for again.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import aiofiles.os
import orjson

from .errors import StorageError
from .ledger import JobStatus, LedgerRecord

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def _storage_error(action: str, path: Path, exc: OSError) -> StorageError:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable"
    else:
        why = exc.strerror or str(exc)
    return StorageError(f"cannot {action} {path}: {why}")


class ImageStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.images_dir = run_dir / IMAGES_DIR

    def prepare(self) -> None:
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create", self.images_dir, exc) from exc
        # A leftover .tmp is an image whose write never finished: it was never counted.
        for tmp in self.images_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def path_for(self, job_id: str, mime_type: str) -> Path:
        return self.images_dir / f"{job_id}.{EXTENSIONS.get(mime_type, 'bin')}"

    async def save(self, job_id: str, data: bytes, mime_type: str, *, sidecar: bytes) -> None:
        """Make the image and its sidecar (the ledger line to come) durable, in that order.

        Both files in one trip to a worker thread: a thread hop per file operation (open,
        write, fsync, rename...) costs more than the writes themselves for small images.
        """
        await _save_files(self.path_for(job_id, mime_type), data, sidecar)

    def relpath(self, job_id: str, mime_type: str) -> str:
        return f"{IMAGES_DIR}/{self.path_for(job_id, mime_type).name}"


def _write_durably(path: Path, data: bytes) -> None:
    """tmp file in the same folder, fsync, rename: the file is there whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            log.debug("could not remove %s", tmp)
        raise _storage_error("write", path, exc) from exc


@aiofiles.os.wrap
def _save_files(image: Path, data: bytes, sidecar: bytes) -> None:
    _write_durably(image.with_suffix(".json"), sidecar)
    _write_durably(image, data)


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
