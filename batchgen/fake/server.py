"""Ways to run the fake: on the caller's loop, in a thread, or as a blocking process.

:class:`FakeServer` lives in :mod:`.app`; it is re-exported here so ``batchgen.fake.server`` offers
the whole set.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

from .app import FakeServer
from .faults import FakeConfig
from .stats import FakeStats

__all__ = ["FakeServer", "ThreadedFakeServer", "run_forever"]

logger = logging.getLogger(__name__)


class ThreadedFakeServer:
    """The same server on its own loop in a daemon thread, for clients in a subprocess."""

    def __init__(
        self, config: FakeConfig | None = None, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        self._server = FakeServer(config, host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> FakeConfig:
        return self._server.config

    @config.setter
    def config(self, value: FakeConfig) -> None:
        self._server.config = value

    @property
    def stats(self) -> FakeStats:
        return self._server.stats  # every read takes its lock and copies

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def server(self) -> FakeServer:
        return self._server

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._server.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-gemini", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._server.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._loop = self._thread = None

    def reset(self) -> None:
        """FakeServer.reset, run on the server's loop so it never races a request."""
        loop = self._loop
        if loop is None:
            self._server.reset()
            return

        async def do() -> None:
            self._server.reset()

        asyncio.run_coroutine_threadsafe(do(), loop).result(timeout=30)

    def __enter__(self) -> ThreadedFakeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_forever(config: FakeConfig, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; prints the URL line a parent process can wait for."""

    async def main() -> None:
        server = FakeServer(config, host, port)
        await server.start()
        print(f"fake Gemini server listening on {server.url}", flush=True)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, done.set)
            except (NotImplementedError, RuntimeError):  # Windows / not the main thread
                pass
        try:
            await done.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
