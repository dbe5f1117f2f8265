"""The pool: a fixed set of workers that take planned jobs from a bounded queue.

Per job: pace (rate limits, adaptive concurrency, budget) -> client -> store -> ledger, with
tenacity driving the retries that :func:`batchgen.retrying.should_retry` allows. A failed job is
a value, a ledger line; only errors that would fail every other job too (bad key, unknown model,
daily quota, a full disk) stop the run, and they stop it cleanly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tenacity import AsyncRetrying, RetryCallState, stop_never

from . import errors as e
from .client import GeminiClient, GeneratedImage
from .config import RunSettings
from .ledger import ErrorInfo, JobStatus, LedgerRecord, LedgerWriter
from .plan import now_iso
from .pricing import PriceTable
from .progress import Progress
from .ratelimit import AdaptiveLimit, SlidingWindow
from .retrying import RetryPolicy, backoff_delay, is_retryable, should_retry
from .spec import JobSpec
from .store import ImageStore, sha256_hex

log = logging.getLogger(__name__)


class StopReason(str, enum.Enum):
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    BUDGET = "budget"
    FATAL = "fatal"
    STORAGE = "storage"


class _Abandoned(Exception):
    """The run is stopping: leave this job pending, it gets no ledger line."""


@dataclass(slots=True)
class RunResult:
    succeeded: int = 0
    failed: int = 0
    spent_usd: float = 0.0
    stop_reason: StopReason = StopReason.COMPLETED
    stop_message: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass(slots=True)
class _JobState:
    attempts: int = 0
    stochastic: int = 0
    cost_usd: float = 0.0
    usage: dict[str, object] | None = None


class Runner:
    def __init__(
        self,
        *,
        client: GeminiClient,
        store: ImageStore,
        ledger: LedgerWriter,
        prices: PriceTable,
        settings: RunSettings,
        progress: Progress,
        spent_before_usd: float = 0.0,
    ) -> None:
        self.client = client
        self.store = store
        self.ledger = ledger
        self.prices = prices
        self.settings = settings
        self.progress = progress
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            retry_blocked=settings.retry_blocked,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
        )
        adaptive = settings.rpm is None and settings.ipm is None
        self.concurrency = AdaptiveLimit(settings.concurrency, adaptive=adaptive)
        self.windows = [
            SlidingWindow(n, settings.rate_window_s) for n in (settings.rpm, settings.ipm) if n
        ]
        self.result = RunResult(spent_usd=spent_before_usd)
        self._reserved_usd = 0.0
        self._stop = asyncio.Event()
        self._first_answer = asyncio.Event()
        self._probing = False
        self._workers: list[asyncio.Task[None]] = []

    # -- stopping ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, reason: StopReason, message: str = "") -> None:
        """Take no new jobs or attempts; requests already in flight finish and are saved."""
        if not self._stop.is_set():
            self.result.stop_reason = reason
            self.result.stop_message = message
            self._stop.set()

    def interrupt(self) -> None:
        """Ctrl-C: the first stops gracefully (hard after ``grace_s``), the second at once."""
        if self.stopping:
            self.cancel()
            return
        self.stop(StopReason.INTERRUPTED, "interrupted")
        asyncio.get_running_loop().call_later(self.settings.grace_s, self.cancel)

    def cancel(self) -> None:
        for task in self._workers:
            task.cancel()

    # -- running ----------------------------------------------------------------------------

    async def run(self, jobs: Iterable[JobSpec]) -> RunResult:
        start = time.monotonic()
        n = self.settings.concurrency
        # Bounded, so a million-row manifest never sits in memory as a million queued jobs.
        queue: asyncio.Queue[JobSpec | None] = asyncio.Queue(maxsize=n * 2)
        producer = asyncio.create_task(self._produce(jobs, queue, n))
        self._workers = [producer, *(asyncio.create_task(self._worker(queue)) for _ in range(n))]
        # Everything ends on its own, or is cancelled (second Ctrl-C, or the grace is over).
        await asyncio.gather(*self._workers, return_exceptions=True)
        self.result.elapsed_s = time.monotonic() - start
        failure = None if producer.cancelled() else producer.exception()
        if failure is not None:
            raise failure  # e.g. the manifest changed under the run and no longer validates
        return self.result

    async def _produce(
        self, jobs: Iterable[JobSpec], queue: asyncio.Queue[JobSpec | None], workers: int
    ) -> None:
        try:
            for job in jobs:
                if self.stopping:
                    break
                await queue.put(job)
        finally:
            if not self.stopping:
                for _ in range(workers):
                    await queue.put(None)
            else:
                self._release_workers(queue, workers)

    def _release_workers(self, queue: asyncio.Queue[JobSpec | None], workers: int) -> None:
        """Stopping: drop what is queued and hand every worker its end marker without waiting."""
        while not queue.empty():
            queue.get_nowait()
        for _ in range(workers):
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                break

    async def _worker(self, queue: asyncio.Queue[JobSpec | None]) -> None:
        while True:
            job = await queue.get()
            if job is None:
                return
            # Once stopping, jobs still queued are skipped (not run, not recorded) so the
            # producer is never left blocked on a full queue.
            if not self.stopping:
                await self._run_job(job)

    async def _run_job(self, spec: JobSpec) -> None:
        state = _JobState()
        started_at, t0 = now_iso(), time.monotonic()
        try:
            image = await self._attempt_with_retries(spec, state)
        except _Abandoned:
            return
        except e.FatalError as exc:
            self._note_error(exc)  # the run was stopped when the answer came in
            return
        except e.APIError as exc:
            self._note_error(exc)
            await self._record_failure(spec, state, exc, started_at, time.monotonic() - t0)
            return
        await self._record_success(spec, state, image, started_at, time.monotonic() - t0)

    async def _attempt_with_retries(self, spec: JobSpec, state: _JobState) -> GeneratedImage:
        def retry(rs: RetryCallState) -> bool:
            exc = rs.outcome.exception() if rs.outcome else None
            if exc is None or self.stopping:
                return False
            ok = should_retry(
                exc,
                attempt=rs.attempt_number,
                stochastic_failures=state.stochastic,
                policy=self.policy,
            )
            if ok:
                self.progress.retrying(+1)
            return ok

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            delay = backoff_delay(exc or Exception(), attempt=rs.attempt_number, policy=self.policy)
            log.debug("%s: attempt %d failed (%s); retrying in %.2fs", spec.job_id,
                      rs.attempt_number, exc, delay)
            return delay

        async def sleep(seconds: float) -> None:
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=seconds)
            except asyncio.TimeoutError:
                return
            finally:
                self.progress.retrying(-1)
            raise _Abandoned

        retrying = AsyncRetrying(stop=stop_never, retry=retry, wait=wait, sleep=sleep, reraise=True)
        async for attempt in retrying:
            with attempt:
                return await self._attempt(spec, state)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(self, spec: JobSpec, state: _JobState) -> GeneratedImage:
        probe = await self._await_first_answer()
        try:
            return await self._send(spec, state)
        finally:
            if probe:
                self._first_answer.set()

    async def _await_first_answer(self) -> bool:
        """Until one answer is back, only one request is out (True for that one).

        A wrong key or model id then costs one request, whatever the concurrency.
        """
        if self._first_answer.is_set():
            return False
        if not self._probing:
            self._probing = True
            return True
        await self._first_answer.wait()
        return False

    async def _send(self, spec: JobSpec, state: _JobState) -> GeneratedImage:
        for window in self.windows:
            await window.acquire()
        async with self.concurrency:
            if self.stopping:
                raise _Abandoned
            reserve = self._reserve(spec)
            state.attempts += 1
            try:
                image = await self.client.generate(spec)
            except e.APIError as exc:
                if isinstance(exc, e.FatalError):
                    # Stop before anything else is sent, not when this job's retries unwind.
                    self.stop(StopReason.FATAL, _fatal_message(exc))
                self._charge(spec, state, exc.usage, billed=exc.maybe_billed)
                if isinstance(exc, e.RateLimitError):
                    self.concurrency.on_rate_limited(exc.retry_after)
                if isinstance(exc, e.PermanentError) and exc.kind in (
                    e.ErrorKind.BLOCKED,
                    e.ErrorKind.NO_IMAGE,
                ):
                    state.stochastic += 1
                log.debug("%s: attempt %d: %s", spec.job_id, state.attempts, exc)
                raise
            finally:
                self._reserved_usd -= reserve
            self._charge(spec, state, image.usage, billed=True)
        self.concurrency.on_success()
        log.debug("%s: attempt %d: ok", spec.job_id, state.attempts)
        return image

    # -- money ------------------------------------------------------------------------------

    def _reserve(self, spec: JobSpec) -> float:
        budget = self.settings.budget_usd
        reserve = self.prices.reserve(spec)
        if budget is not None and self.result.spent_usd + self._reserved_usd + reserve > budget:
            self.stop(StopReason.BUDGET, f"${budget:.2f}")
            raise _Abandoned
        self._reserved_usd += reserve
        return reserve

    def _charge(
        self, spec: JobSpec, state: _JobState, usage: dict[str, object] | None, *, billed: bool
    ) -> None:
        if usage:
            cost = self.prices.from_usage(spec, usage)
            state.usage = usage
        elif billed:
            cost = self.prices.estimate(spec)
        else:
            return
        state.cost_usd += cost
        self.result.spent_usd += cost
        self.progress.spent(self.result.spent_usd)

    # -- recording --------------------------------------------------------------------------

    def _note_error(self, exc: e.APIError) -> None:
        kind = exc.kind.value
        self.result.errors[kind] = self.result.errors.get(kind, 0) + 1

    def _base_record(
        self, spec: JobSpec, state: _JobState, started: str, latency: float
    ) -> dict[str, Any]:
        return {
            "job_id": spec.job_id,
            "prompt": spec.prompt,
            "attempts": state.attempts,
            "usage": state.usage,
            "cost_usd": round(state.cost_usd, 6),
            "latency_s": round(latency, 3),
            "finished_at": now_iso(),
            "started_at": started,
            "model": spec.model,
            "image_size": spec.image_size,
            "aspect_ratio": spec.aspect_ratio,
            "references": tuple(r.source for r in spec.references),
            "seed": spec.seed,
        }

    async def _record_success(
        self, spec: JobSpec, state: _JobState, image: GeneratedImage, started: str, latency: float
    ) -> None:
        record = LedgerRecord(
            status=JobStatus.SUCCEEDED,
            outputs=(self.store.relpath(spec.job_id, image.mime_type),),
            text=image.text,
            width=image.width,
            height=image.height,
            mime_type=image.mime_type,
            sha256=sha256_hex(image.data),
            **self._base_record(spec, state, started, latency),
        )
        try:
            await self.store.save(spec.job_id, image.data, image.mime_type, record)
            self.ledger.append(record)
        except e.StorageError as exc:
            self.stop(StopReason.STORAGE, str(exc))
            return
        self.result.succeeded += 1
        self.progress.job_done(ok=True)

    async def _record_failure(
        self, spec: JobSpec, state: _JobState, exc: e.APIError, started: str, latency: float
    ) -> None:
        record = LedgerRecord(
            status=JobStatus.FAILED,
            error=ErrorInfo(exc.kind.value, is_retryable(exc), exc.http_status, exc.message),
            **self._base_record(spec, state, started, latency),
        )
        try:
            self.ledger.append(record)
        except e.StorageError as err:
            self.stop(StopReason.STORAGE, str(err))
            return
        self.result.failed += 1
        self.progress.job_done(ok=False)



def _fatal_message(exc: e.FatalError) -> str:
    if isinstance(exc, e.DailyQuotaError):
        # Daily quotas reset at midnight Pacific time; retrying sooner only burns attempts.
        pacific: dt.tzinfo
        try:
            pacific = ZoneInfo("America/Los_Angeles")
        except ZoneInfoNotFoundError:
            pacific = dt.timezone(dt.timedelta(hours=-8))
        now = dt.datetime.now(pacific)
        reset = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        hours = (reset - now).total_seconds() / 3600
        return (
            f"{exc}; the daily quota resets at midnight Pacific time "
            f"({reset.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, in {hours:.1f} h)"
        )
    return str(exc)
