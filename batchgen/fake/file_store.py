"""The fake's files: on disk under one temp directory, never in memory.

Request files for the Batch API can be 2 GB, so uploads stream chunk by chunk into the
directory (the sha256 computed as the bytes arrive) and downloads are served from it. A file
that does not exist is the service's 403 PERMISSION_DENIED, not a 404.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .images import probe_image
from .stamps import STAMP_READ_MAX
from .stats import FakeStats
from .validate import ApiError, invalid
from .wire import rfc3339

FILE_TTL_S = 48 * 3600
_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
# "files/ID" at the end of a fileUri: a bare name, our own URI, or the service's.
_URI_RE = re.compile(r"(?:^|/)files/([a-z0-9][a-z0-9-]*)$")
_PROBE_MAX = 64 * 1024 * 1024  # bigger files are not images a request could use


def no_such_file(file_id: str) -> ApiError:
    return ApiError(
        403,
        "PERMISSION_DENIED",
        f"You do not have permission to access the File {file_id} or it may not exist.",
    )


@dataclass
class StoredFile:
    file_id: str  # without the "files/" prefix
    display_name: str
    mime_type: str
    size: int
    sha256: bytes
    created: float
    path: Path
    source: str  # UPLOADED | GENERATED
    seq: int
    probed: bool = False
    dims: tuple[int, int] | None = None  # the image's size, once probed

    def resource(self, base: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": f"files/{self.file_id}"}
        if self.display_name:
            out["displayName"] = self.display_name
        out.update(
            {
                "mimeType": self.mime_type,
                "sizeBytes": str(self.size),
                "createTime": rfc3339(self.created),
                "updateTime": rfc3339(self.created),
                "expirationTime": rfc3339(self.created + FILE_TTL_S),
                "sha256Hash": base64.b64encode(self.sha256.hex().encode("ascii")).decode(),
                "uri": f"{base}/files/{self.file_id}",
            }
        )
        if self.source == "GENERATED":
            host, _, version = base.rpartition("/")
            out["downloadUri"] = (
                f"{host}/download/{version}/files/{self.file_id}:download?alt=media"
            )
        out["state"] = "ACTIVE"
        out["source"] = self.source
        return out


@dataclass
class UploadSession:
    upload_id: str
    file_id: str
    display_name: str
    mime_type: str
    declared_size: int | None
    path: Path
    handle: IO[bytes] | None
    hasher: Any = field(default_factory=hashlib.sha256)
    received: int = 0
    done: StoredFile | None = None


class FileStore:
    """The account's files, on disk under one temp directory made on first use."""

    def __init__(self, stats: FakeStats) -> None:
        self.stats = stats
        self._root: Path | None = None
        self._files: dict[str, StoredFile] = {}
        self._sessions: dict[str, UploadSession] = {}
        self._seq = 0

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="batchgen-fake-files-"))
        return self._root

    def close(self) -> None:
        for session in self._sessions.values():
            if session.handle is not None:
                session.handle.close()
        self._sessions.clear()
        self._files.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def new_id(self, prefix: str = "") -> str:
        while True:
            alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
            fid = prefix + "".join(secrets.choice(alphabet) for _ in range(12))
            if fid not in self._files:
                return fid

    def get(self, file_id: str) -> StoredFile:
        found = self._files.get(file_id)
        if found is None:
            raise no_such_file(file_id)
        return found

    def add(
        self, file_id: str, path: Path, *, display_name: str, mime_type: str, source: str,
        sha256: bytes, size: int,
    ) -> StoredFile:
        self._seq += 1
        stored = StoredFile(
            file_id, display_name, mime_type, size, sha256, time.time(), path, source, self._seq
        )
        self._files[file_id] = stored
        return stored

    def resolve_uri(self, uri: str) -> tuple[int, int] | None:
        """A ``fileData.fileUri`` naming one of our files: its image size (None: not an image).

        URIs that name no file of this server (another host, gs://) are let through as None.
        A name of ours that is gone is the service's 403. Sizes are cached per file: a batch of
        100,000 lines sharing three references probes three images.
        """
        match = _URI_RE.search(uri)
        if match is None:
            return None
        stored = self.get(match.group(1))
        if not stored.probed:
            if stored.size <= _PROBE_MAX:
                with stored.path.open("rb") as fh:
                    stored.dims = probe_image(fh.read())
            stored.probed = True
        return stored.dims

    def read_image(self, uri: str) -> bytes | None:
        """The bytes of one of our files named by a ``fileUri`` (for its stamp); else None."""
        match = _URI_RE.search(uri)
        found = self._files.get(match.group(1)) if match is not None else None
        if found is None or found.size > STAMP_READ_MAX:
            return None
        try:
            return found.path.read_bytes()
        except OSError:
            return None

    def delete(self, file_id: str) -> None:
        stored = self._files.pop(self.get(file_id).file_id)
        # Batches hold their own hard link to an input file, so this cannot pull it from them.
        stored.path.unlink(missing_ok=True)
        self.stats.record_file_deleted()

    def page(self, after: int | None, size: int) -> tuple[list[StoredFile], int | None]:
        """Newest first; the token is the last seq shown, so deletes never shift a page."""
        newest = sorted(self._files.values(), key=lambda f: f.seq, reverse=True)
        if after is not None:
            newest = [f for f in newest if f.seq < after]
        shown = newest[:size]
        more = len(newest) > size
        return shown, (shown[-1].seq if more and shown else None)

    # -- uploads ---------------------------------------------------------------------------

    def start_upload(
        self, file_id: str | None, display_name: str, mime_type: str, declared: int | None
    ) -> UploadSession:
        if file_id is not None:
            if not _ID_RE.match(file_id):
                raise invalid(
                    f"Invalid file name: files/{file_id}. It must be at most 40 lowercase "
                    "letters, digits or dashes, and not start or end with a dash."
                )
            uploading = any(
                s.file_id == file_id and s.done is None for s in self._sessions.values()
            )
            if file_id in self._files or uploading:
                raise ApiError(409, "ALREADY_EXISTS", f"File files/{file_id} already exists.")
        fid = file_id or self.new_id()
        upload_id = secrets.token_urlsafe(24)
        path = self.root / f"upload-{upload_id}"
        session = UploadSession(
            upload_id, fid, display_name, mime_type, declared, path, path.open("wb")
        )
        self._sessions[upload_id] = session
        return session

    def session(self, upload_id: str) -> UploadSession | None:
        return self._sessions.get(upload_id)

    def cancel_upload(self, session: UploadSession) -> None:
        if session.handle is not None:
            session.handle.close()
            session.handle = None
        session.path.unlink(missing_ok=True)
        self._sessions.pop(session.upload_id, None)

    def finalize(self, session: UploadSession) -> StoredFile:
        if session.done is not None:
            return session.done
        if session.declared_size is not None and session.received != session.declared_size:
            raise invalid(
                f"Upload is incomplete: {session.received} of {session.declared_size} bytes."
            )
        if session.handle is not None:
            session.handle.close()
            session.handle = None
        final = self.root / f"file-{session.file_id}"
        os.replace(session.path, final)
        session.done = self.add(
            session.file_id, final, display_name=session.display_name,
            mime_type=session.mime_type, source="UPLOADED", sha256=session.hasher.digest(),
            size=session.received,
        )
        self.stats.record_upload(session.received)
        return session.done
