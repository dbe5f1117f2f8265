"""The Files API and the Batch API on the wire (``shared/gemini-batch-wire.md``).

This is a transport boundary like :mod:`batchgen.api.client`: aiohttp, JSON and OS errors are
translated here, through the same table (:mod:`batchgen.api.translate`), into
:mod:`batchgen.errors`. Calls that can be repeated safely (get, list, cancel, delete, download,
each upload chunk) are retried here as :func:`~batchgen.api.retrying.should_retry` allows;
``create`` is not, because creating a batch is not idempotent: the caller (:mod:`.submit`)
decides what a failed create means.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urljoin

import aiohttp
import orjson

from .. import errors as e
from ..api.http_body import ANSWER_MAX_BYTES, read_capped
from ..api.retrying import Reachability, RetryPolicy, backoff_delay, should_retry
from ..api.session import SessionOwner
from ..api.translate import ERROR_BODY_MAX_BYTES, error_from_http, redirected, translating
from ..settings import ClientSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

API = "v1beta"
CHUNK_BYTES = 8 * 1024 * 1024  # what the SDK sends per upload chunk
LIST_PAGE_SIZE = 100
# Drops a results download survives, each resumed where it stopped.
DOWNLOAD_RESUMES = 8
JSONL_MIME = "application/jsonl"

# Batch states on the wire, and which of them are final.
PENDING = "BATCH_STATE_PENDING"
RUNNING = "BATCH_STATE_RUNNING"
SUCCEEDED = "BATCH_STATE_SUCCEEDED"
FAILED = "BATCH_STATE_FAILED"
CANCELLED = "BATCH_STATE_CANCELLED"
EXPIRED = "BATCH_STATE_EXPIRED"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})

# google.rpc.Code numbers a result line may carry, as the HTTP status the error table knows.
_RPC_TO_HTTP = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400,
                10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}


# What is kept of a line over the cap: enough to find its key and whether it was a response.
LINE_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class RawLine:
    """One line of a downloaded results file."""

    data: bytes  # the line; of an oversized one, its first LINE_HEAD_BYTES
    oversized: bool = False
    ended: bool = True  # False: the download stopped with no newline after it


def line_error(status: Any) -> e.APIError:
    """A result line's ``error`` (google.rpc.Status, gRPC or HTTP numbered), as our error."""
    err = status if isinstance(status, dict) else {}
    code = err.get("code")
    http = code if isinstance(code, int) and code >= 100 else _RPC_TO_HTTP.get(
        code if isinstance(code, int) else 2, 500
    )
    return error_from_http(http, orjson.dumps({"error": err}), {})


def batch_info(op: dict[str, Any]) -> dict[str, Any]:
    """The batch inside an Operation (get/list/create answer): its ``metadata``."""
    meta = op.get("metadata")
    return meta if isinstance(meta, dict) else {}


def output_of(op: dict[str, Any]) -> dict[str, Any] | None:
    """``{"responsesFile": ...}`` or ``{"inlinedResponses": ...}``, or None while not there yet."""
    for out in (batch_info(op).get("output"), op.get("response")):
        if isinstance(out, dict) and (out.get("responsesFile") or out.get("inlinedResponses")):
            return out
    return None


def stats_of(op: dict[str, Any]) -> dict[str, int]:
    """Per-batch counts; a count of zero is left out on the wire, so missing reads as 0."""
    raw = batch_info(op).get("batchStats") or {}
    names = ("requestCount", "successfulRequestCount", "failedRequestCount", "pendingRequestCount")
    out: dict[str, int] = {}
    for n in names:
        try:
            out[n] = int(raw.get(n) or 0)
        except (TypeError, ValueError):
            out[n] = 0
    return out


class BatchAPI(SessionOwner):
    """One aiohttp session for the Files and Batch APIs. Use as an async context manager."""

    def __init__(self, settings: ClientSettings, policy: RetryPolicy | None = None) -> None:
        super().__init__(settings)
        self.policy = policy or RetryPolicy(max_attempts=6, backoff_max_s=30.0)
        self.reach = Reachability()  # until the service answers, a host that is down stops
        self.bytes_uploaded = 0

    async def __aenter__(self) -> BatchAPI:
        self._session = aiohttp.ClientSession(
            # Result files can be gigabytes: bound each read, not the whole download.
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.settings.timeout_s, sock_read=self.settings.timeout_s
            ),
        )
        return self

    # -- plumbing ---------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.settings.base_url.rstrip('/')}/{path.lstrip('/')}"

    def _auth(self) -> tuple[dict[str, str], dict[str, str]]:
        if self.settings.key_in_query:
            return {"key": self.settings.api_key}, {}
        return {}, {"x-goog-api-key": self.settings.api_key}

    async def _call(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """One request, translated: the parsed JSON object on 200, a batchgen error otherwise."""
        query, headers = self._auth()
        query.update(params or {})
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        with translating() as answer:
            async with self.session.request(
                method, self._url(path), params=query, data=data, headers=headers,
                allow_redirects=False,
            ) as resp:
                status = answer.status = resp.status
                _no_redirect(resp)
                raw = bytes(await read_capped(resp, ANSWER_MAX_BYTES, f"{method} {path}"))
                resp_headers = resp.headers
        if status != 200:
            err = error_from_http(status, raw, resp_headers)
            err.answered = True
            raise err
        try:
            obj = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise e.BadResponseError(f"{method} {path}: HTTP 200 with a body that is not JSON",
                                     http_status=200, answered=True) from exc
        if not isinstance(obj, dict):
            raise e.BadResponseError(f"{method} {path}: HTTP 200 with a non-object body",
                                     http_status=200, answered=True)
        return obj

    async def retried(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Repeat an idempotent call while :func:`should_retry` allows it."""
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await fn()
            except e.APIError as exc:
                unreachable = self.reach.after(exc)
                if unreachable is not None:  # a host that never answered: stop at once
                    raise unreachable from exc
                if not should_retry(exc, attempt=attempt, stochastic_failures=0,
                                    policy=self.policy):
                    raise
                delay = backoff_delay(exc, attempt=attempt, policy=self.policy)
                log.debug("%s failed (%s); retrying in %.2fs", what, exc, delay)
                await asyncio.sleep(delay)
            else:
                self.reach.heard()
                return answer

    # -- Files API --------------------------------------------------------------------------

    async def upload(self, path: Path, *, display_name: str, mime_type: str = JSONL_MIME,
                     name: str | None = None) -> dict[str, Any]:
        """Resumable upload of a file on disk, in 8 MiB chunks read one at a time: the File."""
        with path.open("rb") as fh:
            return await self._upload(fh, path.name, os.fstat(fh.fileno()).st_size,
                                      display_name=display_name, mime_type=mime_type, name=name)

    async def _upload(self, fh: BinaryIO, label: str, size: int, *, display_name: str,
                      mime_type: str, name: str | None) -> dict[str, Any]:
        start_headers = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": mime_type,
        }
        meta: dict[str, Any] = {"display_name": display_name, "mime_type": mime_type,
                                "size_bytes": size}
        if name:
            meta["name"] = name
        session_url = await self.retried(
            f"upload {label}", lambda: self._start_upload(start_headers, meta)
        )
        offset = 0
        while True:
            chunk = fh.read(CHUNK_BYTES)
            last = offset + len(chunk) >= size
            command = "upload, finalize" if last else "upload"

            def send(c: bytes = chunk, o: int = offset, cmd: str = command) -> Awaitable[
                dict[str, Any]
            ]:
                return self._send_chunk(session_url, start_headers, c, o, cmd)

            answer = await self.retried(f"upload {label} at {offset}", send)
            offset += len(chunk)
            self.bytes_uploaded += len(chunk)
            if last:
                file = answer.get("file", answer)
                if not isinstance(file, dict) or not file.get("name"):
                    raise e.BadResponseError("upload finalized without a file name")
                return file

    async def _start_upload(self, headers: dict[str, str], meta: dict[str, Any]) -> str:
        query, auth = self._auth()
        with translating():
            async with self.session.post(
                self._url(f"upload/{API}/files"), params=query,
                data=orjson.dumps({"file": meta}),
                headers={**headers, **auth, "Content-Type": "application/json"},
                allow_redirects=False,
            ) as resp:
                _no_redirect(resp)
                raw = bytes(await read_capped(resp, ERROR_BODY_MAX_BYTES, "upload start"))
                if resp.status != 200:
                    raise _answered(error_from_http(resp.status, raw, resp.headers))
                url = resp.headers.get("X-Goog-Upload-URL")
        if not url:
            raise e.BadResponseError("upload start answered without X-Goog-Upload-URL",
                                     http_status=200, answered=True)
        return urljoin(self.settings.base_url, url)

    async def _send_chunk(self, url: str, headers: dict[str, str], chunk: bytes, offset: int,
                          command: str) -> dict[str, Any]:
        # The session URL is the credential for the upload: the SDK sends no key with it.
        h = {**headers, "X-Goog-Upload-Command": command, "X-Goog-Upload-Offset": str(offset)}
        with translating():
            async with self.session.post(url, data=chunk, headers=h,
                                         allow_redirects=False) as resp:
                _no_redirect(resp)
                raw = bytes(await read_capped(resp, ERROR_BODY_MAX_BYTES, "upload chunk"))
                if resp.status != 200:
                    raise _answered(error_from_http(resp.status, raw, resp.headers))
                upload_status = resp.headers.get("X-Goog-Upload-Status", "")
        if not upload_status:
            raise e.BadResponseError("upload chunk answered without X-Goog-Upload-Status")
        if command.endswith("finalize"):
            if upload_status != "final":
                raise e.BadResponseError(f"upload not final after finalize: {upload_status}")
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise e.BadResponseError("upload finalize answer is not JSON") from exc
            return obj if isinstance(obj, dict) else {}
        return {}

    async def delete_file(self, name: str) -> None:
        """Delete an uploaded or generated file; one that is already gone answers 403 or 404."""
        try:
            await self.retried(f"delete {name}", lambda: self._call("DELETE", f"{API}/{name}"))
        except (e.AuthError, e.ModelNotFoundError):
            log.debug("%s already gone", name)

    async def get_file(self, name: str) -> dict[str, Any] | None:
        """The File, or None when it no longer exists (the service answers 403 for that)."""
        try:
            return await self.retried(f"get {name}", lambda: self._call("GET", f"{API}/{name}"))
        except (e.AuthError, e.ModelNotFoundError):
            return None

    async def download_lines(self, name: str, cap: int = ANSWER_MAX_BYTES
                             ) -> AsyncIterator[RawLine]:
        """The lines of a generated file, streamed: at most one line and one chunk in memory.

        A line over ``cap`` is skipped to its newline and handed on as its first bytes only
        (``oversized``), so one bad line does not end the file. A last piece with no newline
        after it comes with ``ended=False``: the caller decides whether it is whole.
        """
        buf = bytearray()
        head: bytes | None = None  # set while skipping an oversized line
        async for chunk in self._download_resuming(name):
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    if head is None:
                        buf += chunk[start:]
                        if len(buf) > cap:
                            head = bytes(buf[:LINE_HEAD_BYTES])
                            buf = bytearray()
                    break
                if head is not None:
                    line, head, oversized = head, None, True
                elif buf:
                    buf += chunk[start:nl]
                    line, oversized = bytes(buf), len(buf) > cap
                    buf.clear()
                else:
                    line = chunk[start:nl]
                    oversized = len(line) > cap
                start = nl + 1
                if oversized:
                    yield RawLine(line[:LINE_HEAD_BYTES], oversized=True)
                elif line.strip():
                    yield RawLine(line)
        if head is not None:
            yield RawLine(head, oversized=True, ended=False)
        elif buf.strip():
            yield RawLine(bytes(buf), ended=False)

    async def _download_resuming(self, name: str) -> AsyncIterator[bytes]:
        """The file's bytes once each. A connection dropped part way resumes from the last byte
        received, with a Range request where the service honours one (206), else by skipping
        what was already read. A download that ends early but cleanly is not seen here: the
        collector counts its lines against the batch's own counts."""
        received, drops = 0, 0
        while True:
            try:
                async for chunk in self._download_from(name, received):
                    received += len(chunk)
                    yield chunk
                return
            except e.TransientError as exc:  # dropped, cut off, timed out, a 5xx
                drops += 1
                if isinstance(exc, e.BodyTooLargeError) or drops >= DOWNLOAD_RESUMES:
                    raise
                log.info("%s: download dropped at byte %d (%s); resuming", name, received, exc)
                await asyncio.sleep(min(0.1 * 2**drops, 5.0))

    async def _download_from(self, name: str, offset: int) -> AsyncIterator[bytes]:
        """The file's bytes from ``offset`` on: a Range request when resuming."""
        query, headers = self._auth()
        query["alt"] = "media"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = self._url(f"download/{API}/{name}:download")
        with translating():
            async with self.session.get(url, params=query, headers=headers,
                                        allow_redirects=False) as resp:
                _no_redirect(resp)
                if resp.status not in (200, 206):
                    body = await read_capped(resp, ERROR_BODY_MAX_BYTES, "the error answer")
                    raise _answered(error_from_http(resp.status, bytes(body), resp.headers))
                # A 200 to a Range request is the whole file again: skip what was read.
                skip = offset if resp.status == 200 else 0
                async for chunk in resp.content.iter_any():
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                        if not chunk:
                            continue
                    yield chunk

    # -- Batch API --------------------------------------------------------------------------

    async def create(self, model: str, display_name: str, file_name: str) -> dict[str, Any]:
        """Create a batch from an uploaded request file. Not retried: see the module docstring."""
        body = {"batch": {"displayName": display_name, "inputConfig": {"fileName": file_name}}}
        return await self._call("POST", f"{API}/models/{model}:batchGenerateContent", body=body)

    async def get(self, name: str) -> dict[str, Any]:
        return await self.retried(f"get {name}", lambda: self._call("GET", f"{API}/{name}"))

    async def list_page(self, token: str | None, page_size: int = LIST_PAGE_SIZE
                        ) -> tuple[list[dict[str, Any]], str | None]:
        params = {"pageSize": str(page_size)}
        if token:
            params["pageToken"] = token
        page = await self.retried(
            "list batches", lambda: self._call("GET", f"{API}/batches", params=params)
        )
        ops = [op for op in page.get("operations") or [] if isinstance(op, dict)]
        return ops, page.get("nextPageToken") or None

    async def find(self, display_names: set[str], page_size: int = LIST_PAGE_SIZE
                   ) -> dict[str, dict[str, Any]]:
        """The batches carrying these display names, paging through the whole list (the API
        has no filter). When one name was created more than once, the oldest is kept."""
        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        pages = 0
        while True:
            ops, token = await self.list_page(token, page_size)
            pages += 1
            for op in ops:  # newest first: a later (older) one overwrites
                dn = batch_info(op).get("displayName")
                if dn in display_names:
                    found[dn] = op
            if not token:
                log.debug("looked up %d display names over %d pages", len(display_names), pages)
                return found

    async def cancel(self, name: str) -> None:
        await self.retried(f"cancel {name}", lambda: self._call("POST", f"{API}/{name}:cancel",
                                                                  body={}))


def _no_redirect(resp: aiohttp.ClientResponse) -> None:
    """Never follow a redirect: the key would go along to wherever it points."""
    if 300 <= resp.status < 400:
        raise redirected(resp.headers)


def _answered(err: e.APIError) -> e.APIError:
    err.answered = True
    return err
