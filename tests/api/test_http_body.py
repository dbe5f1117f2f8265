"""Bodies read under a cap (batchgen/api/http_body.py), over real HTTP: a body with a declared
length lands in one buffer of that size (issue 25), whole; chunked and gzip bodies as before."""

from __future__ import annotations

import gzip
import os

import aiohttp
import pytest
from aiohttp import web

from batchgen.api.http_body import read_capped
from batchgen.errors import BodyTooLargeError

BODY = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks, not a multiple of one


async def _sized(request: web.Request) -> web.Response:
    return web.Response(body=BODY, headers={"Content-Type": "application/octet-stream"})


async def _chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(0, len(BODY), 100_000):
        await resp.write(BODY[i : i + 100_000])
    await resp.write_eof()
    return resp


async def _gzip(request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(BODY), headers={"Content-Encoding": "gzip"})


@pytest.mark.parametrize("path", ["/sized", "/chunked", "/gzip"])
async def test_bodies_come_back_whole_and_capped(path: str) -> None:
    app = web.Application()
    app.router.add_get("/sized", _sized)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/gzip", _gzip)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            url = f"http://127.0.0.1:{port}{path}"
            async with session.get(url) as resp:
                got = await read_capped(resp, len(BODY) + 4096, "the body")
            assert bytes(got) == BODY
            async with session.get(url) as resp:
                with pytest.raises(BodyTooLargeError, match="larger than"):
                    await read_capped(resp, len(BODY) - 1, "the body")
    finally:
        await runner.cleanup()
