"""Reading HTTP bodies with a ceiling, counted after decompression.

An endless 200 body, or a gzip bomb (a few MB on the wire, gigabytes inflated), must not take
the machine's memory: every body batchgen reads (API answers, URL references, URL outputs) goes
through :func:`read_capped`. aiohttp's own decompression is switched off for these requests
(``auto_decompress=False``) so that the cap applies to the inflated bytes, chunk by chunk, with
``zlib``'s ``max_length``: no single wire chunk can inflate past the cap.

The caps, from the largest legitimate answer (``shared/gemini-api.md``):

- The largest output is 4K at 21:9, 6336 x 2688 = 17.0 M pixels. As an 8-bit RGB PNG that does
  not compress at all (noise) it is 17.0 M x 3 bytes + one filter byte a row = 51.1 MB; base64
  makes it 68.1 MB.
- gemini-3-pro-image may send up to two interim ("thought") images in the same answer. Assume
  the worst, that they are as large as the final one: 3 x 68.1 = 204 MB, plus JSON and text.
- With 25% margin: **256 MiB** for an API answer (``ANSWER_MAX_BYTES``). A real 4K answer is
  20-40 MB, so the cap is 6x what is ever seen and 1.25x what is even possible.
- A URL output is one image, not base64: 51.1 MB, with margin **64 MiB** (``OUTPUT_MAX_BYTES``).
- A URL reference can be no larger than the largest request any provider takes (100 MB on
  Google) and still be sent whole; larger ones would be shrunk, but a photo over 100 MiB is
  refused instead of being downloaded: **100 MiB** (``REFERENCE_MAX_BYTES``).
"""

from __future__ import annotations

import zlib

import aiohttp

from ..errors import BadResponseError, BodyTooLargeError

MiB = 1024 * 1024
ANSWER_MAX_BYTES = 256 * MiB
OUTPUT_MAX_BYTES = 64 * MiB
REFERENCE_MAX_BYTES = 100 * MiB
CHUNK_BYTES = 256 * 1024
INFLATE_STEP_BYTES = MiB
# Sent on every request: the encodings read_capped can inflate under its cap.
ACCEPT_ENCODING = "gzip, deflate"


def _too_large(what: str, cap: int, seen: str) -> BodyTooLargeError:
    return BodyTooLargeError(f"{what} is larger than the {cap // MiB} MiB cap ({seen})")


async def read_capped(resp: aiohttp.ClientResponse, cap: int, what: str) -> bytearray:
    """The whole body, inflated, or :class:`BodyTooLargeError` as soon as it passes ``cap``.

    A bytearray, not bytes: orjson and Pillow take it as is, and copying a 200 MB answer into
    bytes would double the peak.
    """
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        raise _too_large(what, cap, f"Content-Length {int(declared)}")
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    inflater: zlib._Decompress | None
    if encoding in ("", "identity"):
        inflater = None
    elif encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj(zlib.MAX_WBITS)
    else:
        raise BadResponseError(f"{what} came with Content-Encoding {encoding!r}, not asked for")
    if inflater is None and declared.isdigit():
        return await _read_sized(resp, int(declared), cap, what)
    buf = bytearray()
    wire = 0
    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
        wire += len(chunk)
        if inflater is None:
            buf += chunk
            if len(buf) > cap:
                raise _too_large(what, cap, f"over {len(buf)} bytes and still coming")
            continue
        data: bytes = chunk
        while data:
            try:
                # At most one byte past the cap comes out, however much the chunk inflates to,
                # and a megabyte at a time, so no inflated copy of the body sits beside it.
                buf += inflater.decompress(data, min(cap - len(buf) + 1, INFLATE_STEP_BYTES))
            except zlib.error as exc:
                raise BadResponseError(f"{what} does not inflate ({encoding}): {exc}") from exc
            if len(buf) > cap:
                raise _too_large(what, cap, f"{encoding} body of {wire}+ bytes inflating past it")
            data = inflater.unconsumed_tail
    if inflater is not None:
        buf += inflater.flush()
        if len(buf) > cap:
            raise _too_large(what, cap, f"{encoding} body of {wire} bytes inflating past it")
    return buf


async def _read_sized(resp: aiohttp.ClientResponse, size: int, cap: int, what: str
                      ) -> bytearray:
    """A body whose length is declared (and under the cap): one buffer of that size, filled in
    place, instead of one grown chunk by chunk (a copy of everything so far each time it
    grows: 12% of the event loop's time on 1 MB answers, issue 25). A body that runs past its
    Content-Length (a broken server) still grows, under the cap."""
    buf = bytearray(size)
    view = memoryview(buf)
    pos = 0
    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
        end = pos + len(chunk)
        if end <= size:
            view[pos:end] = chunk
        else:
            view.release()
            del buf[pos:]
            buf += chunk
            if end > cap:
                raise _too_large(what, cap, f"over {end} bytes and still coming")
        pos = end
    if pos < size:
        view.release()
        del buf[pos:]  # cut short: what came is returned, the caller finds it incomplete
    return buf
