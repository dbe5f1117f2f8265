"""The fake's Files API over HTTP: resumable upload, get, list, delete and download.

The wire format is the one in gemini-batch-wire.md: an upload session URL from
``X-Goog-Upload-URL`` (called without a key), ``X-Goog-Upload-Status`` on every answer, chunks
at explicit offsets, and a finalize answer of ``{"file": File}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from .downloads import serve_fault
from .faults import FakeConfig
from .file_store import FileStore, UploadSession
from .validate import ApiError, invalid, snake
from .wire import (
    check_key,
    decode_page_token,
    encode_page_token,
    error_response,
    json_response,
    page_size,
)

logger = logging.getLogger(__name__)

CHUNK_GRANULARITY = 8 * 1024 * 1024
_READ_CHUNK = 1 << 20


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
        self.downloads_cut = 0  # answers cut short so far (download_cuts in the config)
        self.range_requests = 0  # downloads that asked for a Range

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
        script = self.cfg.batch_download_script
        fault = script.pop(0) if script else "ok"
        if fault != "ok":
            return await serve_fault(request, stored.path, stored.mime_type, fault)
        cfg = self.cfg
        if "Range" in request.headers:
            self.range_requests += 1
        if cfg.download_cuts > self.downloads_cut and cfg.download_cut_bytes > 0:
            self.downloads_cut += 1
            return await self._cut(request, stored.path, stored.size, cfg)
        if not cfg.download_ranges:
            return web.FileResponse(stored.path, headers={"Content-Type": stored.mime_type,
                                                          "Accept-Ranges": "none"})
        # aiohttp's FileResponse answers a Range with 206 and says Accept-Ranges: bytes.
        return web.FileResponse(stored.path, headers={"Content-Type": stored.mime_type})

    async def _cut(
        self, request: web.Request, path: Any, size: int, cfg: FakeConfig
    ) -> web.StreamResponse:
        """A download that hangs up part way, as a dropped connection at 3 GB does."""
        start = 0
        wanted = request.headers.get("Range", "")
        if cfg.download_ranges and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[6:-1] or 0)
        status = 206 if start else 200
        resp = web.StreamResponse(status=status, headers={
            "Content-Type": "application/jsonl",
            "Accept-Ranges": "bytes" if cfg.download_ranges else "none"})
        resp.content_length = size - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        await resp.prepare(request)
        await resp.write(await asyncio.to_thread(_read_part, path, start, cfg.download_cut_bytes))
        if request.transport is not None:
            request.transport.close()
        return resp



def _read_part(path: Any, start: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(length)
