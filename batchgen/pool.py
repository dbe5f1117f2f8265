"""The pool: a fixed set of workers that take planned jobs from a bounded queue.

Per job: pace (rate limits, adaptive concurrency, budget) -> client -> store -> ledger, with
tenacity driving the retries that :func:`batchgen.retrying.should_retry` allows. A failed job is
a value, a ledger line; only errors that would fail every other job too (bad key, unknown model,
daily quota, a full disk) stop the run, and they stop it cleanly.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, stop_never

from . import errors as e
from . import records
from .budget import Budget
from .client import GeminiClient, GeneratedImage
from .config import RunSettings
from .gate import FirstAnswerGate
from .intents import Intent, IntentJournal
from .ledger import LedgerWriter
from .pacing import ConcurrencyCap, Pacing, Stopped, wait_event
from .plan import now_iso
from .pricing import PriceTable
from .progress import Progress, one_line
from .redact import redact
from .retrying import (
    STOCHASTIC_KINDS,
    RetryPolicy,
    backoff_delay,
    fatal_message,
    is_retryable,
    should_retry,
)
from .spec import JobSpec
from .store import ImageStore

log = logging.getLogger(__name__)


class StopReason(str, enum.Enum):
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    BUDGET = "budget"
    FATAL = "fatal"
    STORAGE = "storage"


class _Abandoned(Stopped):
    """The run is stopping: leave this job pending (a ledger line only if it cost money)."""


PRODUCER_YIELD_EVERY = 256


@dataclass(slots=True)
class RunResult:
    succeeded: int = 0
    failed: int = 0
    failed_permanent: int = 0
    spent_usd: float = 0.0
    # Requests earlier runs sent whose outcome never reached the ledger, at their reserved price.
    unsettled_usd: float = 0.0
    unsettled_requests: int = 0
    stop_reason: StopReason = StopReason.COMPLETED
    stop_message: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass(slots=True)
class _JobState:
    started_at: str = ""
    attempts: int = 0
    stochastic: int = 0
    cost_usd: float = 0.0
    usage: dict[str, object] | None = None
    last_error: e.APIError | None = None


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
        intents: IntentJournal | None = None,
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
        # The concurrency is the hard cap; the pacer decides when each request may leave.
        self.concurrency = ConcurrencyCap(settings.concurrency)
        self.pacer = Pacing.for_limits(
            settings.rpm, settings.ipm, window_s=settings.rate_window_s, burst=settings.burst
        )
        self.intents = intents
        carried = intents.carried if intents is not None else None
        self.budget = Budget(
            prices,
            settings.budget_usd,
            spent_usd=spent_before_usd,
            unsettled_usd=carried.usd if carried is not None else 0.0,
        )
        self.result = RunResult(
            spent_usd=spent_before_usd,
            unsettled_usd=self.budget.unsettled_usd,
            unsettled_requests=carried.count if carried is not None else 0,
        )
        self._sent = 0  # requests that have left and not yet settled: what a stop waits for
        self._user_stop = False  # a stop signal from the user has come (the next one drops)
        self._stop = asyncio.Event()
        self._gate = FirstAnswerGate(self._stop)
        self._tasks: list[asyncio.Task[None]] = []

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
            self.budget.wake()
            if reason is not StopReason.INTERRUPTED:
                # Said at once: with 30-60 s answers a silent stop looks hung.
                _say(f"stopping ({self._why()}): {self._waiting()}")

    def interrupt(self, signame: str = "SIGINT") -> None:
        """A stop signal from the user. The first stops gracefully: requests already sent are
        waited for (up to ``grace_s``), also when the run was already stopping for its budget, a
        fatal error or the disk. Only a second one from the user drops them."""
        if self._user_stop:
            _say(f"{signame} again: abandoning {self._sent} request(s) in flight; "
                 "they may still be billed and are counted at their reserved price")
            self.cancel()
            return
        self._user_stop = True
        grace = f"up to {self.settings.grace_s:.0f}s "
        again = "Ctrl-C" if signame == "SIGINT" else signame
        if self.stopping:
            _say(f"{signame}: already stopping ({self._why()}); {self._waiting(grace)}; "
                 f"{again} again to abandon them")
        else:
            self.stop(StopReason.INTERRUPTED, "interrupted")
            _say(f"stopping ({signame}): {self._waiting(grace)}"
                 + (f"; {again} again to abandon them" if self._sent else ""))
        asyncio.get_running_loop().call_later(self.settings.grace_s, self.cancel)

    def _why(self) -> str:
        reason, message = self.result.stop_reason, self.result.stop_message
        if reason is StopReason.BUDGET:
            return f"the {message} budget is reached"
        if reason is StopReason.INTERRUPTED:
            return "interrupted"
        # The first line: the whole message comes again in the summary at the end.
        first = redact(message).strip().splitlines()
        return f"{reason.value}: {first[0] if first else ''}"

    def _waiting(self, grace: str = "") -> str:
        n = self._sent
        if not n:
            return "no request in flight"
        # They left, so they are being generated and paid for: let them land.
        return f"waiting {grace}for {n} request(s) already sent"

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    # -- running ----------------------------------------------------------------------------

    async def run(self, jobs: Iterable[JobSpec]) -> RunResult:
        start = time.monotonic()
        # More workers than requests in flight: a worker busy saving its image must not leave
        # a request slot idle. ConcurrencyCap is what caps the requests.
        n = self.settings.concurrency + max(2, self.settings.concurrency // 2)
        # Bounded, so a million-row manifest never sits in memory as a million queued jobs.
        queue: asyncio.Queue[JobSpec | None] = asyncio.Queue(maxsize=n * 2)
        producer = asyncio.create_task(self._produce(jobs, queue, n))
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(n)]
        self._tasks = [producer, *workers]
        # Everything ends on its own, or is cancelled (second Ctrl-C, or the grace is over).
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.result.elapsed_s = time.monotonic() - start
        failure = None if producer.cancelled() else producer.exception()
        if failure is not None:
            raise failure  # e.g. the manifest changed under the run and no longer validates
        return self.result

    async def _produce(
        self, jobs: Iterable[JobSpec], queue: asyncio.Queue[JobSpec | None], workers: int
    ) -> None:
        try:
            for i, job in enumerate(jobs):
                if self.stopping:
                    break
                if queue.full() or i % PRODUCER_YIELD_EVERY == 0:
                    # Also yields while the plan skips long runs of finished jobs, so answers
                    # and Ctrl-C are handled meanwhile.
                    await queue.put(job)
                else:
                    queue.put_nowait(job)
        finally:
            if not self.stopping:
                for _ in range(workers):
                    await queue.put(None)
            else:
                _release_workers(queue, workers)

    async def _worker(self, queue: asyncio.Queue[JobSpec | None]) -> None:
        while True:
            job = await queue.get()
            if job is None:
                return
            # Once stopping, jobs still queued are skipped (not run, not recorded) so the
            # producer is never left blocked on a full queue.
            if self.stopping:
                continue
            try:
                await self._run_job(job)
            except Exception as exc:  # a bug must stop the run loudly, never hang it
                log.error("%s: unexpected error: %s", job.job_id, redact(repr(exc)), exc_info=True)
                self.stop(StopReason.FATAL, f"internal error on {job.job_id}: {redact(repr(exc))}")

    async def _run_job(self, spec: JobSpec) -> None:
        started_at, t0 = now_iso(), time.monotonic()
        state = _JobState(started_at=started_at)
        try:
            image = await self._attempt_with_retries(spec, state)
        except Stopped:
            if state.cost_usd > 0 and state.last_error is not None:
                # Stopped between billed attempts: the job runs again, but its spend is kept.
                await self._record_failure(spec, state, state.last_error, started_at,
                                           time.monotonic() - t0, retryable=True)
            return
        except e.FatalError as exc:
            self._note_error(exc)  # the run was stopped when the answer came in
            return
        except e.APIError as exc:
            self._note_error(exc)
            await self._record_failure(spec, state, exc, started_at, time.monotonic() - t0)
            return
        recording = self._record_success(spec, state, image, started_at, time.monotonic() - t0)
        del image  # the store gets the only reference to the bytes (see _record_success)
        await recording

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
            elif isinstance(exc, e.APIError):
                log.debug("%s: attempt %d: %s; not retried", spec.job_id, state.attempts,
                          one_line(exc))
            return ok

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            delay = backoff_delay(exc or Exception(), attempt=rs.attempt_number, policy=self.policy)
            # One line per attempt (-v): the outcome and what happens next, the server's
            # message on one line (a 429 body spans several).
            log.debug("%s: attempt %d: %s; retrying in %.2fs", spec.job_id, state.attempts,
                      one_line(exc), delay)
            return delay

        async def sleep(seconds: float) -> None:
            try:
                stopped = await wait_event(self._stop, seconds)
            finally:
                self.progress.retrying(-1)
            if stopped:
                raise _Abandoned

        retrying = AsyncRetrying(stop=stop_never, retry=retry, wait=wait, sleep=sleep, reraise=True)
        async for attempt in retrying:
            with attempt:
                return await self._attempt(spec, state)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(self, spec: JobSpec, state: _JobState) -> GeneratedImage:
        probe = await self._gate.enter()
        answered = False
        try:
            image = await self._send(spec, state)
            answered = True
            return image
        except e.APIError as exc:
            answered = exc.answered
            raise
        finally:
            if probe:
                self._gate.leave(answered=answered)

    async def _send(self, spec: JobSpec, state: _JobState) -> GeneratedImage:
        # References are loaded and encoded before the request takes a slot: a slow or hanging
        # reference then holds no request back. A stop is checked after every await that comes
        # before the send, so nothing leaves once the run is stopping.
        body = await self.client.encode_request(spec)
        if self.stopping:
            raise _Abandoned
        async with self.concurrency:
            if self.stopping:
                raise _Abandoned
            reserve = await self._reserve(spec)
            intent = await self._intend(spec, state, reserve)
            # The pacer's stamp is taken right before the request leaves, after the intent's
            # fsync: a varying wait between stamp and send would let the server count more
            # requests in its window than the pacer did.
            try:
                sent_at = await self.pacer.acquire(self._stop)
                if self.stopping:
                    raise _Abandoned
            except BaseException:  # not sent
                self.budget.release(reserve)
                self._void(intent)
                raise
            self._gate.sent()
            state.attempts += 1
            self._sent += 1
            try:
                image = await self.client.send(spec, body)
            except e.APIError as exc:
                state.last_error = exc
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
                raise
            finally:
                self._sent -= 1
                self.budget.release(reserve)
                del body
            self._charge(spec, state, image.usage, billed=True)
        self.pacer.on_answer(sent_at)
        log.debug("%s: attempt %d: ok", spec.job_id, state.attempts)
        return image

    # -- money ------------------------------------------------------------------------------

    async def _reserve(self, spec: JobSpec) -> float:
        """The request's worst-case price, reserved; a budget stop if the spend leaves no room."""
        reserve = await self.budget.wait_reserve(spec, self._stop)
        if reserve is None:
            if not self.stopping:
                self.stop(StopReason.BUDGET, f"${self.budget.limit_usd or 0.0:.2f}")
            raise _Abandoned
        return reserve

    async def _intend(self, spec: JobSpec, state: _JobState, reserve: float) -> Intent | None:
        """Record, durably, that this request may be billed: before it leaves, so that a
        ``kill -9`` while it is in flight still leaves it counted (see :mod:`.intents`)."""
        if self.intents is None:
            return None
        intent: Intent | None = None
        try:
            intent, write = self.intents.record(spec.job_id, state.started_at, reserve)
            await self.intents.durable(write)
            if self.stopping:  # the fsync was an await: nothing leaves once the run is stopping
                raise _Abandoned
        except BaseException as exc:  # not sent: neither reserved nor possibly billed
            self.budget.release(reserve)
            self._void(intent)
            if isinstance(exc, e.StorageError):
                self.stop(StopReason.STORAGE, str(exc))
                raise _Abandoned from exc
            raise
        return intent

    def _void(self, intent: Intent | None) -> None:
        if intent is not None and self.intents is not None:
            self.intents.void(intent)

    def _settle(self, spec: JobSpec, state: _JobState) -> None:
        """The job's ledger line is written: it settles its intents, and is fsync'd soon."""
        if self.intents is not None:
            self.intents.settle(spec.job_id, state.started_at)
        self.ledger.sync_soon()

    def _charge(
        self, spec: JobSpec, state: _JobState, usage: dict[str, object] | None, *, billed: bool
    ) -> bool:
        """Charge one attempt; whether it cost anything."""
        if not usage and not billed:
            return False
        cost = self.budget.charge(spec, usage, billed=billed)
        if usage:
            state.usage = usage
        state.cost_usd += cost
        self.result.spent_usd = self.budget.spent_usd
        self.progress.spent(self.budget.committed_usd)
        return True

    # -- recording --------------------------------------------------------------------------

    def _note_error(self, exc: e.APIError) -> None:
        kind = exc.kind.value
        self.result.errors[kind] = self.result.errors.get(kind, 0) + 1

    def _fields(
        self, spec: JobSpec, state: _JobState, started: str, latency: float
    ) -> dict[str, Any]:
        return records.job_fields(
            spec,
            attempts=state.attempts,
            usage=state.usage,
            cost_usd=state.cost_usd,
            latency_s=latency,
            started_at=started,
        )

    async def _record_success(
        self, spec: JobSpec, state: _JobState, image: GeneratedImage, started: str, latency: float
    ) -> None:
        record = records.success_record(
            spec,
            self._fields(spec, state, started, latency),
            output=self.store.relpath(spec.job_id, image.mime_type),
            data=image.data,
            mime_type=image.mime_type,
            width=image.width,
            height=image.height,
            text=image.text,
        )
        line = record.to_line()
        # Nothing here keeps the image bytes while the save waits for its fsyncs: the store
        # frees them once they are written, so a worker parked on a slow disk holds no image.
        saving = self.store.save(spec.job_id, image.data, image.mime_type, sidecar=line)
        del image
        try:
            await saving
            self.ledger.append_line(line)
        except e.StorageError as exc:
            self.stop(StopReason.STORAGE, str(exc))
            return
        self._settle(spec, state)
        self.result.succeeded += 1
        self.progress.job_done(ok=True)

    async def _record_failure(
        self,
        spec: JobSpec,
        state: _JobState,
        exc: e.APIError,
        started: str,
        latency: float,
        *,
        retryable: bool | None = None,
    ) -> None:
        retry = is_retryable(exc) if retryable is None else retryable
        record = records.failure_record(
            self._fields(spec, state, started, latency), exc, retryable=retry, message=exc.message
        )
        try:
            self.ledger.append_line(record.to_line())
        except e.StorageError as err:
            self.stop(StopReason.STORAGE, str(err))
            return
        self._settle(spec, state)
        if retryable is None:
            self.result.failed += 1
            if not retry:
                self.result.failed_permanent += 1
            self.progress.job_done(ok=False)


def _say(message: str) -> None:
    """A line for the user now; never an error (after a SIGHUP the terminal may be gone)."""
    try:
        Progress.write(message)
    except (OSError, ValueError):
        log.debug("could not print: %s", message)


def _release_workers(queue: asyncio.Queue[JobSpec | None], workers: int) -> None:
    """Stopping: drop what is queued and hand every worker its end marker without waiting."""
    while not queue.empty():
        queue.get_nowait()
    for _ in range(workers):
        try:
            queue.put_nowait(None)
        except asyncio.QueueFull:
            break
