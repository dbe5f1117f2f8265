"""A results download that goes wrong on the way (``FakeConfig.batch_download_script``).

The file on the service is whole; what reaches the client is not. These are the network's
faults, not the service's: a proxy or an HTTP/1.0 hop that closes the connection after half
the file with no Content-Length and no chunking (to the client that reads as a clean end), a
connection dropped short of its Content-Length, a 503, a line corrupted in transit, a stream
that never ends, one that stops sending. A fresh download of the same file is whole again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from .validate import ApiError
from .wire import error_response

# How often an endless download sends one more line: fast enough to show a read that is not
# bounded (thousands of lines a second), slow enough not to flood a shared machine.
_ENDLESS_EVERY_S = 0.001
_STALL_S = 3600.0
_STEP_S = 0.05


async def serve_fault(request: web.Request, path: Path, mime: str, fault: str
                      ) -> web.StreamResponse:
    if fault == "503":
        return error_response(ApiError(503, "UNAVAILABLE", "The service is currently unavailable."))
    data = await asyncio.to_thread(path.read_bytes)  # small: tests choose their size
    half = data[: max(1, len(data) // 2)]
    if fault == "cut":
        return _cut_cleanly(request, half, mime)
    if fault == "garble":
        return web.Response(body=_garble(data), headers={"Content-Type": mime})
    resp = web.StreamResponse(headers={"Content-Type": mime})
    if fault in ("drop", "stall"):
        resp.content_length = len(data)
    try:
        await resp.prepare(request)
        if fault == "endless":
            await resp.write(data)
            n = 0
            while True:
                n += 1
                await resp.write(b'{"key": "stray-%d", "response": {}}\n' % n)
                await asyncio.sleep(_ENDLESS_EVERY_S)
        await resp.write(half)
        if fault == "stall":
            # In steps: a client that hangs up ends the wait (the handler is not cancelled).
            for _ in range(int(_STALL_S / _STEP_S)):
                if request.transport is None or request.transport.is_closing():
                    return resp
                await asyncio.sleep(_STEP_S)
    except (ConnectionResetError, asyncio.CancelledError):  # the client went away
        return resp
    if request.transport is not None:
        request.transport.abort()  # "drop": short of the Content-Length it promised
    return resp


def _cut_cleanly(request: web.Request, body: bytes, mime: str) -> web.StreamResponse:
    """Written on the socket by hand: aiohttp would add a Content-Length or chunking."""
    transport = request.transport
    if transport is not None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {mime}\r\nConnection: close\r\n\r\n"
                .encode())
        transport.write(head + body)
        transport.close()  # flushes what was written, then a clean FIN
    return web.Response()


def garble_line(line: bytes) -> bytes:
    """Bytes of the line's middle overwritten with NULs: the same length, no longer JSON."""
    out = bytearray(line)
    mid = len(out) // 2
    junk = b"\x00#\x00#\x00#\x00#"[: max(0, len(out) - 1 - mid)]
    out[mid: mid + len(junk)] = junk
    return bytes(out)


def _garble(data: bytes) -> bytes:
    """The middle line of the file garbled (in transit: the file itself stays whole)."""
    lines = data.split(b"\n")
    full = [i for i, line in enumerate(lines) if line.strip()]
    if full:
        i = full[len(full) // 2]
        lines[i] = garble_line(lines[i])
    return b"\n".join(lines)
