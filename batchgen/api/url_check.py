"""``validate --check-urls``: each URL reference asked whether it is there, before a long run.

A URL that 404s or does not answer otherwise fails its jobs one by one, hours into an overnight
run (kind ``reference``). HEAD asks for headers only; a server that refuses HEAD (403 from a URL
signed for GET alone, 405, 501) is asked again with a one-byte ranged GET, whose body is not read.
Each distinct URL is asked once, by at most ``concurrency`` requests at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp

from .. import errors as e
from ..progress import one_line
from .translate import translating

DEFAULT_CONCURRENCY = 16
DEFAULT_TIMEOUT_S = 10.0
# What a server that does not do HEAD answers to one; asked again with GET.
_HEAD_REFUSED = frozenset({403, 405, 501})


async def check_urls(urls: Iterable[str], *, concurrency: int = DEFAULT_CONCURRENCY,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, str]:
    """url -> why a request for it would fail (``HTTP 404``, ``unreachable (...)``, ``no answer
    within 10s``); the URLs that answered are left out."""
    todo = iter(dict.fromkeys(urls))
    failed: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        for url in todo:  # one shared iterator: each URL goes to one worker
            why = await _problem(session, url, timeout_s)
            if why is not None:
                failed[url] = why

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(max(concurrency, 1))))
    return failed


async def _problem(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str | None:
    try:
        with translating():
            async with session.head(url, allow_redirects=True) as resp:
                status = resp.status
            if status in _HEAD_REFUSED:
                async with session.get(url, headers={"Range": "bytes=0-0"},
                                       allow_redirects=True) as resp:
                    status = resp.status
    except e.TimeoutError_:
        return f"no answer within {timeout_s:g}s"
    except e.APIError as exc:
        return f"unreachable ({one_line(exc.message, 120)})"
    return None if status < 400 else f"HTTP {status}"
