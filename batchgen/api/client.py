"""The client: one JobSpec in, one generated image out, or one batchgen error.

The request is built (references loaded, shrunk to fit), posted and its answer read. Every
failure on the way leaves as a batchgen error, through the one table in :mod:`.translate`;
nothing above this module sees a third-party exception. The API key is
sent only to the configured endpoint and never appears in a message (:mod:`batchgen.redact`).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
from dataclasses import dataclass
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
    whole_image_problem,
)
from ..redact import redact
from ..spec import JobSpec, Reference, Turn
from .http_body import (
    ACCEPT_ENCODING,
    ANSWER_MAX_BYTES,
    OUTPUT_MAX_BYTES,
    REFERENCE_MAX_BYTES,
    read_capped,
)
from .request import request_body, turn_body
from .response import data_url_bytes, parse_answer
from .session import SessionOwner
from .translate import error_body, error_from_http, redirected, snippet, translating

log = logging.getLogger(__name__)

URL_DOWNLOAD_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    data: bytes
    mime_type: str
    width: int
    height: int
    text: str | None
    usage: dict[str, Any] | None
    grounding: Any = None  # a grounded answer's groundingMetadata, kept in the sidecar
    tier: str | None = None  # the x-gemini-service-tier answer header: the tier that served it
    turn: tuple[dict[str, Any], ...] = ()  # the model turn a later edit sends back


def source_prefix(spec: JobSpec) -> str:
    """Where a job came from (``file:line: images: ``), to name in a reference's error."""
    if not spec.source_file:
        return ""
    line = f":{spec.source_line}" if spec.source_line else ""
    return f"{spec.source_file}{line}: images: "


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
        history = spec.chain.history if spec.chain is not None else ()
        try:
            # URL references first: their size is known only once fetched, and it counts in the
            # request limit like a local file's.
            fetched: dict[int, tuple[bytearray, str]] = {}
            sized: list[Reference] = []
            for i, ref in enumerate(refs):
                if ref.url:
                    fetched[i] = await self.fetch_reference(ref.url)
                    sized.append(dataclasses.replace(ref, size_bytes=len(fetched[i][0])))
                else:
                    sized.append(ref)
            earlier = [p.image for t in history for p in t.parts if p.image is not None]
            per_ref = reference_budget([*earlier, *sized], self.settings.max_request_bytes)
            turns = [await self._turn(t, per_ref) for t in history]
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
            raise e.ReferenceError_(source_prefix(spec) + exc.message) from exc
        return request_body(spec, parts, turns)

    async def _turn(self, turn: Turn, per_ref: int | None) -> dict[str, Any]:
        async def inline(image: Reference) -> dict[str, Any]:
            raw, mime = await self._local_reference(image, per_ref)
            return {"inlineData": {"mimeType": mime, "data": _b64(raw)}}

        return await turn_body(turn, inline)

    async def generate(self, spec: JobSpec, tier: str | None = None) -> GeneratedImage:
        """One attempt. Raises a :class:`batchgen.errors.APIError` subclass on any failure."""
        return await self.send(spec, await self.encode_request(spec, tier))

    async def encode_request(self, spec: JobSpec, tier: str | None = None) -> bytes:
        """The request body, references loaded and encoded: the part that needs no server.
        ``tier``: the body's ``service_tier`` (None: not sent, the service's standard)."""
        body = await self.build_request(spec)
        if tier is not None:
            body["service_tier"] = tier
        return orjson.dumps(body)

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
        headers["Accept-Encoding"] = ACCEPT_ENCODING
        try:
            with translating() as answer:
                # Never follow a redirect: the key (header or ?key=) would go along to wherever
                # it points. The API does not redirect, so a 3xx is a misconfigured or hostile
                # host.
                async with self.session.post(
                    url, params=params, data=body, headers=headers,
                    allow_redirects=False, auto_decompress=False,
                ) as resp:
                    status = answer.status = resp.status
                    resp_headers = resp.headers
                    if 300 <= status < 400:
                        raise redirected(resp_headers, " (the key would go along)")
                    if status == 200:
                        raw = await read_capped(resp, ANSWER_MAX_BYTES, "the answer")
                    else:
                        raw = await error_body(resp)
        except e.APIError as failed:
            # A cut-off 200, or a timeout while the image was being made: likely billed.
            failed.maybe_billed = answer.status == 200 or isinstance(failed, e.TimeoutError_)
            raise
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
                f"HTTP 200 with a body that is not JSON: {snippet(raw)!r}", http_status=200
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
            made = _finish(data, parsed.text, usage, parsed.grounding)
            served = headers.get(TIER_HEADER) if headers is not None else None
            return dataclasses.replace(
                made, tier=served.lower() if served else None, turn=parsed.turn)
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
        with translating():
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

    async def fetch_reference(self, url: str) -> tuple[bytearray, str]:
        """A URL reference's bytes, within ``--reference-timeout`` and the 100 MiB cap counted
        after decompression, checked to decode whole; any failure is the reference's (kind
        ``reference``, not retried), never an API connection error. Live requests and batch
        mode's uploads both fetch through here, so both keep the same limits."""
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
            # read_capped's own message already starts "reference URL is larger ...".
            said = exc.message if exc.message.startswith(f"reference {shown} ") else (
                f"reference {shown}: {exc.message}")
            raise e.ReferenceError_(said) from exc
        mime = sniff_image_type(bytes(data[:64]))
        if mime is None:
            raise e.ReferenceError_(f"reference {shown} is not an image")
        if mime in ("image/png", "image/jpeg", "image/webp"):  # Pillow has no HEIF decoder
            # In the shrink thread: a decode holds the pixels, and one thread holds one image.
            why = await in_shrink_thread(whole_image_problem, data)
            if why is not None:
                raise e.ReferenceError_(f"reference {shown}: {why}")
        return data, mime


TIER_HEADER = "x-gemini-service-tier"


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


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
