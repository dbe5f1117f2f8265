"""One attempt at one job: from the request body to the answer, with everything it may cost.

In order: the first-answer gate, the request body (references loaded), a slot under the
concurrency cap, the budget's reservation, the intent on disk, the pacer's stamp, the send; then
the charge and the outcome reported to the pacer. The retries around it are the pool's
(:mod:`batchgen.pool`); whether to retry is :func:`batchgen.retrying.should_retry`'s.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from .. import errors as e
from ..aio import ConcurrencyCap
from ..api.client import GeminiClient, GeneratedImage
from ..api.retrying import STOCHASTIC_KINDS, Reachability, fatal_message
from ..folder.intents import Intent, IntentJournal
from ..pacing.gate import FirstAnswerGate
from ..pacing.pacer import Pacing
from ..progress import Progress
from ..spec import JobSpec
from .budget import Budget
from .outcome import Abandoned, JobState, StopReason, StopRun

log = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True, eq=False)
class Attempt:
    """Makes one attempt of a job; called once per try by the pool's retry loop.

    ``stop_event`` is the run's stop flag, looked at after every await that precedes a send;
    ``stop`` is how this part stops the run itself (budget, fatal error, full disk).
    """

    client: GeminiClient
    concurrency: ConcurrencyCap
    pacer: Pacing
    gate: FirstAnswerGate
    budget: Budget
    intents: IntentJournal | None
    progress: Progress
    stop_event: asyncio.Event
    stop: StopRun
    # --tier: the tiers in order, and the sheds in a row that move a job to the next one.
    tiers: tuple[str, ...] = ()
    fallback_after: int = 3
    # Requests that have left and not yet settled: what a stop waits for.
    in_flight: int = field(default=0, init=False)
    # Whether the endpoint has answered yet: until it has, connections that cannot be made
    # stop the run (retrying.Reachability decides when).
    reach: Reachability = field(default_factory=Reachability, init=False)

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    async def __call__(self, spec: JobSpec, state: JobState) -> GeneratedImage:
        probe = await self.gate.enter()
        answered = False
        try:
            image = await self._send(spec, state)
            answered = True
            self.reach.heard()
            return image
        except e.APIError as exc:
            answered = exc.answered
            unreachable = self.reach.after(exc)
            if unreachable is not None:
                # A host that never answered: stop with the jobs still pending, rather than
                # run through the manifest recording each as failed (connection).
                self.stop(StopReason.FATAL, str(unreachable))
                raise unreachable from exc
            raise
        finally:
            if probe:
                self.gate.leave(answered=answered)

    async def _send(self, spec: JobSpec, state: JobState) -> GeneratedImage:
        # References are loaded and encoded before the request takes a slot: a slow or hanging
        # reference then holds no request back. A stop is checked after every await that comes
        # before the send, so nothing leaves once the run is stopping.
        if state.tier is None and self.tiers:
            state.tier = self.tiers[0]
        body = await self.client.encode_request(spec, state.tier)
        if self.stopping:
            raise Abandoned
        async with self.concurrency:
            if self.stopping:
                raise Abandoned
            reserve = await self._reserve(spec, state.tier)
            intent = await self._intend(spec, state, reserve)
            # The pacer's stamp is taken right before the request leaves, after the intent's
            # fsync: a varying wait between stamp and send would let the server count more
            # requests in its window than the pacer did.
            try:
                sent_at = await self.pacer.acquire(self.stop_event)
                if self.stopping:
                    raise Abandoned
            except BaseException:  # not sent
                self.budget.release(reserve)
                self._void(intent)
                raise
            self.gate.sent()
            state.attempts += 1
            self.in_flight += 1
            try:
                image = await self.client.send(spec, body)
            except e.APIError as exc:
                state.last_error = exc
                if isinstance(exc, e.TierNotOfferedError):
                    exc.message = (f"{spec.model} does not offer the {state.tier} tier (--tier): "
                                   f"{exc.message}")
                if isinstance(exc, e.FatalError):
                    # Stop before anything else is sent, not when this job's retries unwind.
                    self.stop(StopReason.FATAL, fatal_message(exc))
                if not self._charge(spec, state, exc.usage, billed=exc.maybe_billed):
                    self._void(intent)
                if isinstance(exc, e.RateLimitError):
                    self.pacer.on_rate_limited(sent_at, exc.retry_after)
                elif exc.answered:
                    self.pacer.on_answer(sent_at)
                if exc.kind in STOCHASTIC_KINDS:
                    state.stochastic += 1
                self._shed(spec, state, exc)
                raise
            finally:
                self.in_flight -= 1
                self.budget.release(reserve)
                del body
            if image.tier is not None and self.tiers:
                state.tier = image.tier  # the service says which tier served (and bills) it
            state.sheds = 0
            self._charge(spec, state, image.usage, billed=True)
        self.pacer.on_answer(sent_at)
        return image

    def _shed(self, spec: JobSpec, state: JobState, exc: e.APIError) -> None:
        """A 429 or 503 on flex is a shed: retried as any, and after ``fallback_after`` of them
        in a row the job moves to the next tier of --tier."""
        if state.tier != "flex" or exc.http_status not in (429, 503):
            state.sheds = 0
            return
        state.sheds += 1
        at = self.tiers.index(state.tier) if state.tier in self.tiers else len(self.tiers)
        if state.sheds >= self.fallback_after and at + 1 < len(self.tiers):
            state.tier, state.sheds = self.tiers[at + 1], 0
            log.info("%s: shed %d times on flex; moving to the %s tier", spec.job_id,
                     self.fallback_after, state.tier)

    # -- money ------------------------------------------------------------------------------

    async def _reserve(self, spec: JobSpec, tier: str | None) -> float:
        """The request's worst-case price, reserved; a budget stop if the spend leaves no room."""
        reserve = await self.budget.wait_reserve(spec, self.stop_event, tier)
        if reserve is None:
            if not self.stopping:
                self.stop(StopReason.BUDGET, f"${self.budget.limit_usd or 0.0:.2f}")
            raise Abandoned
        return reserve

    async def _intend(self, spec: JobSpec, state: JobState, reserve: float) -> Intent | None:
        """Record, durably, that this request may be billed: before it leaves, so that a
        ``kill -9`` while it is in flight still leaves it counted (see :mod:`.intents`)."""
        if self.intents is None:
            return None
        intent: Intent | None = None
        try:
            intent, write = self.intents.record(spec.job_id, state.started_at, reserve)
            await self.intents.durable(write)
            if self.stopping:  # the fsync was an await: nothing leaves once the run is stopping
                raise Abandoned
        except BaseException as exc:  # not sent: neither reserved nor possibly billed
            self.budget.release(reserve)
            self._void(intent)
            if isinstance(exc, e.StorageError):
                self.stop(StopReason.STORAGE, str(exc))
                raise Abandoned from exc
            raise
        return intent

    def _void(self, intent: Intent | None) -> None:
        if intent is not None and self.intents is not None:
            self.intents.void(intent)

    def _charge(
        self, spec: JobSpec, state: JobState, usage: dict[str, object] | None, *, billed: bool
    ) -> bool:
        """Charge one attempt; whether it cost anything."""
        if not usage and not billed:
            return False
        cost = self.budget.charge(spec, usage, billed=billed, tier=state.tier)
        if usage:
            state.usage = usage
        state.cost_usd += cost
        self.progress.spent(self.budget.committed_usd)
        return True
