"""A misbehaving HTTP server on 127.0.0.1 (aiohttp, in its own thread), and a CLI run measured.

Each test sets the server's ``handler``; every request it receives is recorded, so a test can
say what reached it (and that the key never did).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.helpers.cli import SECRET

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MiB = 1024 * 1024


class Hostile:
    """A misbehaving HTTP server on loopback: each test sets ``handler``; every request is seen."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.seen: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
            }
        )
        assert self.handler is not None
        return await self.handler(request)

    async def _start(self) -> None:
        app = web.Application(client_max_size=200 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> Hostile:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def keys_seen(self) -> list[str]:
        """Every way the API key reached this server: header, ?key= or the key anywhere."""
        found = []
        for req in self.seen:
            if "x-goog-api-key" in req["headers"]:
                found.append("x-goog-api-key header")
            if "key" in req["query"]:
                found.append("?key= parameter")
            if SECRET in json.dumps(req):
                found.append("the key itself")
        return found


def run_measured(args: list[str | Path], env: dict[str, str], timeout: float = 90) -> tuple[
        int, str, int]:
    """Run the CLI; return its exit code, stderr and its own peak RSS in bytes (wait4)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", *map(str, args)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()))  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    return proc.returncode, "".join(stderr), usage.ru_maxrss * 1024
