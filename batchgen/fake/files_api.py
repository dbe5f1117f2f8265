"""The fake's Files API: resumable uploads kept on disk, get, list, delete and download.

Request files for the Batch API can be 2 GB, so nothing here holds a file in memory: uploads
stream chunk by chunk into a temp directory, downloads are served from disk, and the sha256 is
computed as the bytes arrive. The wire format is the one in gemini-batch-wire.md: an upload
session URL from ``X-Goog-Upload-URL``, ``X-Goog-Upload-Status`` on every answer, a finalize
answer of ``{"file": File}``, and 403 (not 404) for a file that does not exist.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from .answers import bad_key, missing_key
from .faults import FakeConfig
from .images import probe_image
from .stats import FakeStats
from .validate import ApiError, invalid, snake

logger = logging.getLogger(__name__)

FILE_TTL_S = 48 * 3600
CHUNK_GRANULARITY = 8 * 1024 * 1024
_READ_CHUNK = 1 << 20
_ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}
# "files/ID" at the end of a fileUri: a bare name, our own URI, or the service's.
_URI_RE = re.compile(r"(?:^|/)files/([a-z0-9][a-z0-9-]*)$")
_PROBE_MAX = 64 * 1024 * 1024  # bigger files are not images a request could use


def rfc3339(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    h = _JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers}
    return web.Response(body=body, status=status, headers=h)


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(err.body(), err.code, {**err.headers, **(headers or {})})


def check_key(request: web.Request, cfg: FakeConfig) -> None:
    """The key as the service takes it: header ``x-goog-api-key`` or query ``key``."""
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if not key:
        raise missing_key()
    if key != cfg.api_key:
        raise bad_key()


def no_such_file(file_id: str) -> ApiError:
    return ApiError(
        403,
        "PERMISSION_DENIED",
        f"You do not have permission to access the File {file_id} or it may not exist.",
    )


def encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode("ascii")


def decode_page_token(token: str) -> int | None:
    """The sequence number a page ends at; None for no token. Bad tokens are a 400."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        if text.startswith("after:"):
            return int(text[6:])
    except (ValueError, UnicodeError):
        pass
    raise invalid("Invalid page token.")


def page_size(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("pageSize") or request.query.get("page_size")
    if not raw:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise invalid(f"Invalid value for pageSize: {raw!r}") from None
    if n < 0:
        raise invalid("pageSize must not be negative.")
    return min(n, maximum) if n else default


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


def _base(request: web.Request) -> str:
    """Where the resource lives, as the client called it: ``http://host:port/v1beta``."""
    version = request.match_info.get("version", "v1beta")
    return f"{request.scheme}://{request.host}/{version}"


def _status(value: str, received: int | None = None) -> dict[str, str]:
    headers = {"X-Goog-Upload-Status": value}
    if received is not None:
        headers["X-Goog-Upload-Size-Received"] = str(received)
    return headers


class FilesApi:
    """HTTP handlers over a :class:`FileStore`; ``config`` is read live from ``get_config``."""

    def __init__(self, store: FileStore, get_config: Any) -> None:
        self.store = store
        self._config = get_config

    def add_routes(self, app: web.Application) -> None:
        # The service answers on v1 and v1beta alike; google-genai 3.x defaults to v1.
        app.router.add_post("/upload/{version:v1beta|v1}/files", self.handle_upload)
        app.router.add_get("/{version:v1beta|v1}/files", self.handle_list)
        app.router.add_get("/{version:v1beta|v1}/files/{name}", self.handle_get)
        app.router.add_delete("/{version:v1beta|v1}/files/{name}", self.handle_delete)
        app.router.add_get("/download/{version:v1beta|v1}/files/{name}", self.handle_download)

    @property
    def cfg(self) -> FakeConfig:
        config: FakeConfig = self._config()
        return config

    # -- upload ----------------------------------------------------------------------------

    async def handle_upload(self, request: web.Request) -> web.StreamResponse:
        try:
            upload_id = request.query.get("upload_id")
            if upload_id is None:
                return await self._start(request)
            return await self._chunk(request, upload_id)
        except ApiError as err:
            return error_response(err)

    async def _start(self, request: web.Request) -> web.Response:
        check_key(request, self.cfg)
        if request.headers.get("X-Goog-Upload-Protocol", "").lower() != "resumable":
            raise invalid("Only the resumable protocol is supported (X-Goog-Upload-Protocol).")
        if request.headers.get("X-Goog-Upload-Command", "").lower() != "start":
            raise invalid("The first request of an upload must carry X-Goog-Upload-Command: start.")
        raw = await request.read()
        meta: dict[str, Any] = {}
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise invalid(f"Invalid JSON payload received. {exc}") from None
            if not isinstance(body, dict) or not isinstance(body.get("file", {}), dict):
                raise invalid("Invalid JSON payload received. Expected {\"file\": {...}}.")
            meta = {snake(k): v for k, v in body.get("file", {}).items()}
        declared_raw = request.headers.get("X-Goog-Upload-Header-Content-Length")
        declared = None
        if declared_raw is not None:
            try:
                declared = int(declared_raw)
            except ValueError:
                raise invalid("X-Goog-Upload-Header-Content-Length must be a number.") from None
        mime = (
            request.headers.get("X-Goog-Upload-Header-Content-Type")
            or meta.get("mime_type")
            or "application/octet-stream"
        )
        name = meta.get("name")
        file_id = None
        if name:
            file_id = str(name).removeprefix("files/")
        session = self.store.start_upload(
            file_id, str(meta.get("display_name") or ""), str(mime), declared
        )
        url = (
            f"{request.scheme}://{request.host}/upload/{request.match_info['version']}/files"
            f"?upload_id={session.upload_id}"
            "&upload_protocol=resumable"
        )
        headers = {
            "X-Goog-Upload-URL": url,
            "X-Goog-Upload-Chunk-Granularity": str(CHUNK_GRANULARITY),
            **_status("active"),
        }
        return web.Response(status=200, headers=headers)

    async def _chunk(self, request: web.Request, upload_id: str) -> web.Response:
        session = self.store.session(upload_id)
        if session is None:
            raise ApiError(404, "NOT_FOUND", "No such upload session.")
        commands = {
            c.strip().lower()
            for c in request.headers.get("X-Goog-Upload-Command", "").split(",")
            if c.strip()
        }
        if not commands or commands - {"upload", "finalize", "query", "cancel"}:
            raise invalid("X-Goog-Upload-Command must be upload, finalize, query or cancel.")
        if session.done is not None:
            # A retried finalize whose answer was lost: the upload is already complete.
            await request.read()
            return json_response(
                {"file": session.done.resource(_base(request))},
                headers=_status("final", session.received),
            )
        if "cancel" in commands:
            self.store.cancel_upload(session)
            return web.Response(status=200, headers=_status("cancelled"))
        if "query" in commands:
            return web.Response(status=200, headers=_status("active", session.received))
        if "upload" in commands:
            offset_raw = request.headers.get("X-Goog-Upload-Offset")
            try:
                offset = int(offset_raw) if offset_raw is not None else -1
            except ValueError:
                offset = -1
            if offset != session.received:
                await request.read()
                return error_response(
                    invalid(
                        f"Invalid X-Goog-Upload-Offset {offset_raw!r}: "
                        f"{session.received} bytes were received so far."
                    ),
                    _status("active", session.received),
                )
            await self._receive(request, session)
        else:
            await request.read()
        if "finalize" in commands:
            stored = self.store.finalize(session)
            return json_response(
                {"file": stored.resource(_base(request))},
                headers=_status("final", session.received),
            )
        return web.Response(status=200, headers=_status("active", session.received))

    async def _receive(self, request: web.Request, session: UploadSession) -> None:
        handle = session.handle
        assert handle is not None  # only a finished session has none, handled by the caller
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            if (
                session.declared_size is not None
                and session.received + len(chunk) > session.declared_size
            ):
                raise invalid(
                    f"Upload is larger than X-Goog-Upload-Header-Content-Length "
                    f"({session.declared_size} bytes)."
                )
            handle.write(chunk)
            session.hasher.update(chunk)
            session.received += len(chunk)
        handle.flush()

    # -- get, list, delete, download -------------------------------------------------------

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name.endswith(":download"):
            return await self.handle_download(request)
        try:
            check_key(request, self.cfg)
            return json_response(self.store.get(name).resource(_base(request)))
        except ApiError as err:
            return error_response(err)

    async def handle_list(self, request: web.Request) -> web.Response:
        try:
            check_key(request, self.cfg)
            after = decode_page_token(request.query.get("pageToken", ""))
            shown, last = self.store.page(after, page_size(request, 10, 100))
        except ApiError as err:
            return error_response(err)
        out: dict[str, Any] = {}
        if shown:
            out["files"] = [f.resource(_base(request)) for f in shown]
        if last is not None:
            out["nextPageToken"] = encode_page_token(last)
        return json_response(out)

    async def handle_delete(self, request: web.Request) -> web.Response:
        try:
            check_key(request, self.cfg)
            self.store.delete(request.match_info["name"])
        except ApiError as err:
            return error_response(err)
        return json_response(b"{}")

    async def handle_download(self, request: web.Request) -> web.StreamResponse:
        try:
            check_key(request, self.cfg)
            name = request.match_info["name"]
            file_id, _, method = name.partition(":")
            if method != "download":
                raise ApiError(404, "NOT_FOUND", f"Method {method or '(none)'} not found.")
            if request.query.get("alt") != "media":
                raise invalid("Downloads need alt=media.")
            stored = self.store.get(file_id)
            if stored.source != "GENERATED":
                raise invalid(f"Only generated files can be downloaded, not files/{file_id}.")
        except ApiError as err:
            return error_response(err)
        return web.FileResponse(stored.path, headers={"Content-Type": stored.mime_type})

