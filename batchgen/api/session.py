"""The aiohttp session the two API clients share (:mod:`.client`, :mod:`batchgen.batch.wire`)."""

from __future__ import annotations

import aiohttp

from ..redact import register_secret
from ..settings import ClientSettings


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
