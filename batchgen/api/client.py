"""The client: one JobSpec in, one generated image out, or one batchgen error.

This is the transport boundary. aiohttp, JSON and OS errors are translated here into the tree in
:mod:`batchgen.errors`; nothing above this module sees a third-party exception. The API key is
sent only to the configured endpoint and never appears in a message (:mod:`batchgen.redact`).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
import math
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from PIL import Image, UnidentifiedImageError

from .. import errors as e
from ..manifest.references import (
    in_shrink_thread,
    load_reference_bytes,
    reference_budget,
    shrink_image_bytes,
    sniff_image_type,
)
from ..redact import redact, register_secret
from ..settings import ClientSettings
from ..spec import JobSpec, Reference
from .http_body import (
    ACCEPT_ENCODING,
    ANSWER_MAX_BYTES,
    OUTPUT_MAX_BYTES,
    REFERENCE_MAX_BYTES,
    read_capped,
)
from .request import request_body
from .response import data_url_bytes, parse_answer
from .retrying import MAX_SERVER_DELAY_S

log = logging.getLogger(__name__)

URL_DOWNLOAD_ATTEMPTS = 3
# An error answer is read only for its message: a megabyte is plenty, the rest is dropped.
ERROR_BODY_MAX_BYTES = 1024 * 1024
_PLEASE_RETRY = re.compile(r"retry in ([0-9]+(?:\.[0-9]+)?)\s*(ms|s)\b", re.IGNORECASE)
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)s\s*$")


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    data: bytes
    mime_type: str
    width: int
    height: int
    text: str | None
    usage: dict[str, Any] | None
    grounding: Any = None  # a grounded answer's groundingMetadata, kept in the sidecar


def parse_retry_delay(details: Any, headers: Any, message: str) -> float | None:
    """The wait the server asks for: RetryInfo in the body, Retry-After, or 'Please retry in Ns'."""
    if isinstance(details, list):
        for d in details:
            if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
                m = _DURATION.match(str(d.get("retryDelay") or d.get("retry_delay") or ""))
                if m:
                    return float(m.group(1))
    header = headers.get("Retry-After") if headers is not None else None
    if header:
        try:
            seconds = float(header)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(header).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError):
                seconds = math.nan
        # "NaN", "inf" or garbage is no instruction at all: treated as absent.
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    m = _PLEASE_RETRY.search(message)
    if m:
        value = float(m.group(1))
        return value / 1000 if m.group(2).lower() == "ms" else value
    return None


def error_from_http(status: int, body: bytes | bytearray, headers: Any) -> e.APIError:
    """The one table from an HTTP error answer to batchgen's error tree."""
    message, rpc_status = "", ""
    details: list[Any] = []
    try:
        err = orjson.loads(body).get("error", {})
        message = str(err.get("message", ""))
        rpc_status = str(err.get("status", ""))
        details = err.get("details") or []
    except (orjson.JSONDecodeError, AttributeError):
        message = _snippet(body)
    message = redact(message or f"HTTP {status}")
    retry_after = parse_retry_delay(details, headers, message)
    reasons = {str(d.get("reason", "")) for d in details if isinstance(d, dict)}
    quota_ids = [
        str(v.get("quotaId", ""))
        for d in details
        if isinstance(d, dict)
        for v in (d.get("violations") or [])
        if isinstance(v, dict)
    ]
    kw: dict[str, Any] = {"http_status": status, "retry_after": retry_after}
    if status == 429 and any("PerDay" in q for q in quota_ids):
        return e.DailyQuotaError(message, **kw)
    if (
        retry_after is not None
        and retry_after > MAX_SERVER_DELAY_S
        and (status in (408, 429) or status >= 500)
    ):
        # One ceiling for every wait the server asks for: past it, every worker would sleep on
        # it in silence. The run stops instead and says when to resume.
        wait = f" (the server asks to wait {retry_after:.0f}s, over the {MAX_SERVER_DELAY_S:.0f}s"
        wait += " that batchgen waits at most)"
        cls = e.DailyQuotaError if status == 429 else e.ServerWaitError
        return cls(message + wait, **kw)
    if status == 429:
        return e.RateLimitError(message, **kw)
    if status == 400 and "API_KEY_INVALID" in reasons:
        return e.AuthError(message, **kw)
    if status in (401, 403):
        return e.AuthError(message, **kw)
    if status == 404:
        return e.ModelNotFoundError(message, **kw)
    if status == 408 or status >= 500:
        return e.ServerError(message or rpc_status, **kw)
    return e.InvalidRequestError(message, **kw)


def _snippet(body: bytes | bytearray) -> str:
    text = body[:200].decode("utf-8", "replace")
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()


def translate(exc: BaseException) -> e.APIError:
    """aiohttp and OS errors at the transport boundary, as batchgen errors."""
    msg = redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return e.TimeoutError_(msg)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return e.BadResponseError(f"body cut off: {msg}")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return e.ConnectionError_(msg)
    return e.BadResponseError(msg)


def _where(spec: JobSpec) -> str:
    """Where a job came from (``file:line: images: ``), to name in a reference's error."""
    if not spec.source_file:
        return ""
    line = f":{spec.source_line}" if spec.source_line else ""
    return f"{spec.source_file}{line}: images: "


class SessionOwner:
    """What the two API clients share: the key registered for redaction before anything can
    print it, and one aiohttp session, opened by the subclass's ``__aenter__``."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        register_secret(settings.api_key)
        self._session: aiohttp.ClientSession | None = None

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"{type(self).__name__} used outside 'async with'")
        return self._session


class GeminiClient(SessionOwner):
    """Async client for ``models/{model}:generateContent``. Use as an async context manager."""

    async def __aenter__(self) -> GeminiClient:
        connector = aiohttp.TCPConnector(
            limit=max(self.settings.connections, 1), ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )
        return self

    def endpoint(self, model: str) -> tuple[str, dict[str, str], dict[str, str]]:
        url = f"{self.settings.base_url.rstrip('/')}/v1beta/models/{model}:generateContent"
        if self.settings.key_in_query:
            return url, {"key": self.settings.api_key}, {}
        return url, {}, {"x-goog-api-key": self.settings.api_key}

    async def build_request(self, spec: JobSpec) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": spec.prompt}]
        refs: tuple[Reference, ...] = spec.references
        try:
            # URL references first: their size is known only once fetched, and it counts in the
            # request limit like a local file's.
            fetched: dict[int, tuple[bytearray, str]] = {}
            sized: list[Reference] = []
            for i, ref in enumerate(refs):
                if ref.url:
                    fetched[i] = await self._fetch_reference(ref.url)
                    sized.append(dataclasses.replace(ref, size_bytes=len(fetched[i][0])))
                else:
                    sized.append(ref)
            per_ref = reference_budget(sized, self.settings.max_request_bytes)
            for i, ref in enumerate(refs):
                if i in fetched:
                    data, mime = fetched.pop(i)
                    raw: bytes | bytearray = data
                    if per_ref is not None and len(data) > per_ref:
                        raw = await in_shrink_thread(
                            shrink_image_bytes, data, per_ref, name=redact(ref.source)
                        )
                        mime = "image/jpeg"
                    del data
                else:
                    raw, mime = await self._local_reference(ref, per_ref)
                parts.append({"inlineData": {"mimeType": mime, "data": _b64(raw)}})
                del raw
        except e.ReferenceError_ as exc:
            # Name the job's manifest line, so the ledger says which row to fix.
            raise e.ReferenceError_(_where(spec) + exc.message) from exc
        return request_body(spec, parts)

    async def generate(self, spec: JobSpec) -> GeneratedImage:
        """One attempt. Raises a :class:`batchgen.errors.APIError` subclass on any failure."""
        return await self.send(spec, await self.encode_request(spec))

    async def encode_request(self, spec: JobSpec) -> bytes:
        """The request body, references loaded and encoded: the part that needs no server."""
        return orjson.dumps(await self.build_request(spec))

    async def _local_reference(
        self, ref: Reference, per_ref: int | None
    ) -> tuple[bytes, str]:
        if per_ref is None or ref.size_bytes <= per_ref:
            return await asyncio.to_thread(load_reference_bytes, ref, max_bytes=None)
        # Read and shrunk in the shrink thread: a worker waiting for its turn holds nothing.
        return await in_shrink_thread(load_reference_bytes, ref, max_bytes=per_ref)

    async def send(self, spec: JobSpec, body: bytes) -> GeneratedImage:
        """POST a body made by :meth:`encode_request` and turn the answer into an image.

        Every error raised after the endpoint answered carries ``answered=True``; every error
        after an HTTP 200 also carries ``maybe_billed`` and the answer's usage, because the
        image was generated (and paid for) even if it never reached the disk.
        """
        url, params, headers = self.endpoint(spec.model)
        headers["Content-Type"] = "application/json"
        status = 0
        headers["Accept-Encoding"] = ACCEPT_ENCODING
        try:
            # Never follow a redirect: the key (header or ?key=) would go along to wherever it
            # points. The API does not redirect, so a 3xx is a misconfigured or hostile host.
            async with self.session.post(
                url, params=params, data=body, headers=headers,
                allow_redirects=False, auto_decompress=False,
            ) as resp:
                status, resp_headers = resp.status, resp.headers
                if 300 <= status < 400:
                    raise _redirected(status, resp_headers)
                if status == 200:
                    raw = await read_capped(resp, ANSWER_MAX_BYTES, "the answer")
                else:
                    raw = await _error_body(resp)
        except e.APIError as refused:  # redirected, or a body over its cap
            refused.http_status, refused.answered = status, True
            refused.maybe_billed = status == 200
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            err = translate(exc)
            if status:
                err.http_status, err.answered = status, True
            # A cut-off 200, or a timeout while the image was being made: likely billed.
            err.maybe_billed = status == 200 or isinstance(err, e.TimeoutError_)
            raise err from exc
        del body
        if status != 200:
            err = error_from_http(status, raw, resp_headers)
            err.answered = True
            raise err
        try:
            return await self._read_answer(raw, resp_headers)
        except e.APIError as err:
            err.answered = True
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # An answer of a shape nobody documented must fail this attempt, not the run.
            raise e.BadResponseError(
                f"HTTP 200 with an unreadable answer: {type(exc).__name__}: {exc}",
                http_status=200,
                maybe_billed=True,
                answered=True,
            ) from exc

    async def _read_answer(self, raw: bytes | bytearray, headers: Any) -> GeneratedImage:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise e.BadResponseError(
                f"HTTP 200 with a body that is not JSON: {_snippet(raw)!r}", http_status=200
            ) from exc
        del raw
        if isinstance(obj, dict) and "error" in obj and "candidates" not in obj:
            err = obj["error"] if isinstance(obj["error"], dict) else {}
            code = err.get("code")
            raise error_from_http(
                code if isinstance(code, int) and code >= 400 else 500, orjson.dumps(obj), headers
            )
        usage = None
        try:
            parsed = parse_answer(obj)  # no image: BlockedError / NoImageError, with usage
            del obj
            usage = parsed.usage
            data = parsed.data
            if data is None:
                assert parsed.url is not None
                if parsed.url.startswith("data:"):
                    data, _ = data_url_bytes(parsed.url)
                else:
                    data = await self._download_output(parsed.url)
            return _finish(data, parsed.text, usage, parsed.grounding)
        except e.TransientError as err:
            # The image was made, so it was paid for, but it did not reach us intact; an empty
            # answer made none.
            err.http_status = 200
            err.maybe_billed = not isinstance(err, e.EmptyAnswerError)
            err.usage = err.usage or usage
            raise

    async def _get_bytes(
        self, url: str, cap: int, what: str, timeout: aiohttp.ClientTimeout | None = None
    ) -> bytearray:
        # No key goes with these GETs, so redirects (a CDN's) may be followed.
        try:
            async with self.session.get(
                url,
                headers={"Accept-Encoding": ACCEPT_ENCODING},
                auto_decompress=False,
                timeout=timeout if timeout is not None else self.session.timeout,
            ) as resp:
                if resp.status != 200:
                    raise e.ConnectionError_(
                        f"GET {redact(url)} answered HTTP {resp.status}", http_status=resp.status
                    )
                return await read_capped(resp, cap, what)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise translate(exc) from exc

    async def _download_output(self, url: str) -> bytes:
        # The image is already paid for and its URL expires: try hard before giving up on it.
        last: e.APIError | None = None
        for attempt in range(URL_DOWNLOAD_ATTEMPTS):
            try:
                return bytes(
                    await self._get_bytes(url, OUTPUT_MAX_BYTES, f"the image at {redact(url)}")
                )
            except e.BodyTooLargeError:
                raise  # as large the next time
            except e.APIError as exc:
                last = exc
                log.debug("download of %s failed (%s), attempt %d", redact(url), exc, attempt + 1)
                await asyncio.sleep(0.2 * 2**attempt)
        assert last is not None
        raise last

    async def _fetch_reference(self, url: str) -> tuple[bytearray, str]:
        """A URL reference's bytes, within ``--reference-timeout``; any failure is the
        reference's (kind ``reference``, not retried), never an API connection error."""
        shown = redact(url)
        limit = self.settings.reference_timeout_s
        timeout = aiohttp.ClientTimeout(total=limit)
        try:
            data = await self._get_bytes(url, REFERENCE_MAX_BYTES, f"reference {shown}", timeout)
        except e.TimeoutError_ as exc:
            raise e.ReferenceError_(
                f"reference {shown}: no answer within {limit:g}s (--reference-timeout)"
            ) from exc
        except e.APIError as exc:
            raise e.ReferenceError_(f"reference {shown}: {exc.message}") from exc
        mime = sniff_image_type(bytes(data[:64]))
        if mime is None:
            raise e.ReferenceError_(f"reference {shown} is not an image")
        return data, mime


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def _redirected(status: int, headers: Any) -> e.RedirectError:
    location = redact(str(headers.get("Location", "") or "(no Location)"))
    return e.RedirectError(
        f"the API endpoint redirected to {location}; batchgen never follows a redirect of an "
        "API call (the key would go along): check --base-url"
    )


async def _error_body(resp: aiohttp.ClientResponse) -> bytearray:
    """The start of an error answer, for its message; the rest of it is not worth reading."""
    try:
        return await read_capped(resp, ERROR_BODY_MAX_BYTES, "the error answer")
    except e.BodyTooLargeError:
        return bytearray(b"(an error answer over 1 MiB)")


def _finish(
    data: bytes, text: str | None, usage: dict[str, Any] | None, grounding: Any
) -> GeneratedImage:
    # The declared mimeType is unreliable (JPEG bytes labelled PNG): trust the bytes.
    mime = sniff_image_type(data)
    if mime is None:
        raise e.BadResponseError(f"the image bytes are not PNG, JPEG or WebP ({len(data)} bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise e.BadResponseError(f"the image does not decode: {exc}") from exc
    if not (width and height):
        raise e.BadResponseError("the image has no size")
    return GeneratedImage(data, mime, width, height, text, usage, grounding)
