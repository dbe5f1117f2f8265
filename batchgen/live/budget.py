"""The budget: what the run folder has spent, what may have been billed, and the cap.

Three amounts count against ``--budget``:

- ``spent_usd``: the ledger's spend from earlier runs plus every charge of this run;
- ``unsettled_usd``: requests an earlier run sent whose outcome never reached the ledger (a
  ``kill -9`` in flight, a ``docker stop``, a full disk): counted at their reserved (worst-case)
  price, because they may have been billed (see :mod:`batchgen.intents`);
- ``reserved_usd``: this run's requests in flight, each at its worst-case price, so that a burst
  of answers can never carry the spend past the cap.
"""

from __future__ import annotations

import asyncio

from ..pricing import PriceTable
from ..spec import JobSpec


class Budget:
    def __init__(
        self,
        prices: PriceTable,
        limit_usd: float | None,
        *,
        spent_usd: float = 0.0,
        unsettled_usd: float = 0.0,
    ) -> None:
        self.prices = prices
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.unsettled_usd = unsettled_usd
        self.reserved_usd = 0.0
        self.reservations = 0  # counted apart: float sums of reservations never quite return to 0
        self._freed = asyncio.Event()  # set (and replaced) when a reservation ends
        self._tiers: dict[str, PriceTable] = {}

    @property
    def committed_usd(self) -> float:
        """Spent plus what may have been billed: the figure the cap is judged on."""
        return self.spent_usd + self.unsettled_usd

    def _at(self, tier: str | None) -> PriceTable:
        """The prices at a request's service tier (a --tier flex,standard job may move on)."""
        if tier is None or tier == self.prices.tier:
            return self.prices
        found = self._tiers.get(tier)
        if found is None:
            found = self._tiers[tier] = self.prices.at_tier(tier)
        return found

    def reserve(self, spec: JobSpec, tier: str | None = None) -> float | None:
        """Reserve a request's worst-case price; None if it would not fit under the cap."""
        reserve = self._at(tier).reserve(spec)
        limit = self.limit_usd
        if limit is not None and self.committed_usd + self.reserved_usd + reserve > limit:
            return None
        self.reserved_usd += reserve
        self.reservations += 1
        return reserve

    async def wait_reserve(
        self, spec: JobSpec, stop: asyncio.Event, tier: str | None = None
    ) -> float | None:
        """Reserve, waiting while only other requests' reservations keep this one from fitting
        (they usually cost less than reserved). None when the spend alone leaves no room, or the
        run stops meanwhile."""
        while True:
            reserve = self.reserve(spec, tier)
            if reserve is not None:
                return reserve
            if not self.reservations or stop.is_set():
                return None
            await self._freed.wait()

    def release(self, reserve: float) -> None:
        """The request has settled: its charge (if any) replaces the reservation."""
        self.reservations -= 1
        self.reserved_usd = max(self.reserved_usd - reserve, 0.0) if self.reservations else 0.0
        self.wake()

    def wake(self) -> None:
        """Let every waiting reservation look again (a reservation ended, or the run stops)."""
        self._freed.set()
        self._freed = asyncio.Event()

    def charge(
        self, spec: JobSpec, usage: dict[str, object] | None, *, billed: bool,
        tier: str | None = None,
    ) -> float:
        """The cost of one answered (or probably billed) attempt, at the tier that served it,
        added to the spend."""
        prices = self._at(tier)
        if usage:
            cost = prices.from_usage(spec, usage)
        elif billed:
            cost = prices.estimate(spec)
        else:
            return 0.0
        self.spent_usd += cost
        return cost
