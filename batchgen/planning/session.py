"""What a run sets up around its requests, shared by live and batch mode: the endpoint (the real
one, or the built-in fake server on loopback), the signals that stop a run, and what ``run.json``
records of the run's settings and command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..redact import redact
from ..settings import ClientSettings, RunOptions

FAKE_KEY = "fake-key"


@contextlib.asynccontextmanager
async def endpoint(client: ClientSettings, fake: bool) -> AsyncIterator[ClientSettings]:
    """The real endpoint, or the built-in fake server started on loopback for this run."""
    if not fake:
        yield client
        return
    from ..fake import FakeConfig, FakeServer

    async with FakeServer(FakeConfig(api_key=FAKE_KEY)) as server:
        yield dataclasses.replace(client, base_url=server.url, api_key=FAKE_KEY)


def install_signals(
    loop: asyncio.AbstractEventLoop, handler: Callable[[str], None]
) -> Callable[[], None]:
    """SIGINT, SIGTERM and SIGHUP (an ssh session that drops) all stop the run the same way:
    gracefully the first time, at once the second."""
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, handler, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore


def settings_meta(options: RunOptions) -> dict[str, Any]:
    settings, shard = options.settings, options.selection.shard
    return {
        "concurrency": settings.concurrency,
        "max_attempts": settings.max_attempts,
        "rpm": settings.rpm,
        "ipm": settings.ipm,
        "retry_blocked": settings.retry_blocked,
        "budget_usd": settings.budget_usd,
        "shard": list(shard) if shard else None,
        **({"tiers": list(settings.tiers)} if settings.tiers else {}),
    }


def command_line() -> str:
    """The command as typed, to print as the way to resume. Never carries a key: keys are env."""
    args = [a for a in sys.argv[1:]]
    return redact("batchgen " + shlex.join(args))

