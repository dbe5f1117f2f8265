"""The pool: a fixed set of workers that take planned jobs from a bounded queue.

Per job: attempts (:mod:`batchgen.attempt`: gate, budget, intent, pacer, client) -> store ->
ledger (:mod:`batchgen.recorder`), with tenacity driving the retries that
:func:`batchgen.retrying.should_retry` allows. A failed job is a value, a ledger line; only errors
that would fail every other job too (bad key, unknown model, daily quota, a full disk) stop the
run, and they stop it cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from tenacity import AsyncRetrying, RetryCallState, stop_never

from .. import errors as e
from ..aio import ConcurrencyCap, Stopped, wait_event
from ..api.client import GeminiClient, GeneratedImage
from ..api.retrying import RetryPolicy, backoff_delay, is_retryable, should_retry
from ..folder.appender import LedgerWriter
from ..folder.intents import IntentJournal
from ..folder.layout import now_iso
from ..folder.verdicts import Redos
from ..pacing.gate import FirstAnswerGate
from ..pacing.pacer import Pacing
from ..planning.lineage import Lineage
from ..pricing import PriceTable
from ..progress import Progress, one_line
from ..redact import redact
from ..settings import RunSettings
from ..spec import JobSpec
from ..store.images import ImageStore
from ..words import plural
from .attempt import Attempt
from .budget import Budget
from .chains import ChainScheduler, Outcome
from .outcome import Abandoned, JobState, RunResult, StopReason
from .recorder import Recorder

__all__ = ["RunResult", "Runner", "StopReason"]  # run.py and runflow.py import them from here

log = logging.getLogger(__name__)

PRODUCER_YIELD_EVERY = 256


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
        redos: Redos | None = None,
        lineage: Lineage | None = None,
        states: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.progress = progress
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            retry_blocked=settings.retry_blocked,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
        )
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
        self._user_stop = False  # a stop signal from the user has come (the next one drops)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.attempt = Attempt(
            client=client,
            # The concurrency is the hard cap; the pacer decides when each request may leave.
            concurrency=ConcurrencyCap(settings.concurrency),
            pacer=Pacing.for_limits(
                settings.rpm, settings.ipm, window_s=settings.rate_window_s, burst=settings.burst
            ),
            gate=FirstAnswerGate(self._stop),
            budget=self.budget,
            intents=intents,
            progress=progress,
            stop_event=self._stop,
            stop=self.stop,
            tiers=settings.tiers,
            fallback_after=settings.fallback_after_sheds,
        )
        # Chained jobs wait here, not in the queue, until their parents are settled.
        self.chains = ChainScheduler(lineage, states or {}) if lineage is not None else None
        self.recorder = Recorder(store=store, ledger=ledger, intents=intents, progress=progress,
                                 result=self.result, stop=self.stop, redos=redos)

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
            if self.chains is not None:
                self.chains.changed.set()
            if reason is not StopReason.INTERRUPTED and not self.progress.quiet:
                # Said at once: with 30-60 s answers a silent stop looks hung.
                _say(f"stopping ({self._why()}): {self._waiting()}")

    def interrupt(self, signame: str = "SIGINT") -> None:
        """A stop signal from the user. The first stops gracefully: requests already sent are
        waited for (up to ``grace_s``), also when the run was already stopping for its budget, a
        fatal error or the disk. Only a second one from the user drops them."""
        if self._user_stop:
            _say(f"{signame} again: abandoning {self.attempt.in_flight} request(s) in flight; "
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
            self.stop(StopReason.INTERRUPTED, f"interrupted ({again})")
            _say(f"stopping ({signame}): {self._waiting(grace)}"
                 + (f"; {again} again to abandon them" if self.attempt.in_flight else ""))
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
        n = self.attempt.in_flight
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
        self.result.spent_usd = self.budget.spent_usd  # every charge is the budget's
        if self.recorder.intents is not None:
            lost = self.recorder.intents.carried.lost()
            self.result.lost_requests = len(lost)
            self.result.lost_usd = sum(i.usd for i in lost)
        failure = None if producer.cancelled() else producer.exception()
        if failure is not None:
            raise failure  # e.g. the manifest changed under the run and no longer validates
        return self.result

    async def _produce(
        self, jobs: Iterable[JobSpec], queue: asyncio.Queue[JobSpec | None], workers: int
    ) -> None:
        chains = self.chains
        try:
            for i, job in enumerate(jobs):
                if self.stopping:
                    break
                if chains is not None:
                    await self._feed_chains(chains, queue)
                    if job.chain is not None:
                        offered = chains.offer(job)
                        if offered is None:
                            continue
                        job = offered
                if queue.full() or i % PRODUCER_YIELD_EVERY == 0:
                    # Also yields while the plan skips long runs of finished jobs, so answers
                    # and Ctrl-C are handled meanwhile.
                    await queue.put(job)
                else:
                    queue.put_nowait(job)
            while chains is not None and not self.stopping:
                await self._feed_chains(chains, queue)
                if not chains.waiting:
                    break
                chains.changed.clear()
                if not (chains.ready or chains.failed or self.stopping):
                    await chains.changed.wait()
            if chains is not None and chains.left_out:
                _say(f"{plural(chains.left_out, 'chained job')} left for another run: a "
                     "parent is neither made nor in this run (--only, --limit, a failure to "
                     "retry); they run once it is")
        finally:
            if not self.stopping:
                for _ in range(workers):
                    await queue.put(None)
            else:
                _release_workers(queue, workers)

    async def _feed_chains(self, chains: ChainScheduler, queue: asyncio.Queue[JobSpec | None]
                           ) -> None:
        """Children whose parents failed for good are recorded (once, unsent, unbilled);
        children whose parents succeeded join the queue."""
        while chains.failed and not self.stopping:
            job, parent = chains.failed.popleft()
            started = now_iso()
            why = e.ParentFailedError(f"not sent: its parent {parent} failed for good")
            await self.recorder.failure(job, JobState(started_at=started), why, started, 0.0)
            chains.finished(job.job_id, Outcome.FAILED)
        while chains.ready and not self.stopping:
            await queue.put(chains.ready.popleft())

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
                outcome = await self._run_job(job)
                if self.chains is not None and job.chain is not None:
                    self.chains.finished(job.job_id, outcome)
            except Exception as exc:  # a bug must stop the run loudly, never hang it
                log.error("%s: unexpected error: %s", job.job_id, redact(repr(exc)), exc_info=True)
                self.stop(StopReason.FATAL, f"internal error on {job.job_id}: {redact(repr(exc))}")

    async def _run_job(self, spec: JobSpec) -> Outcome:
        started_at, t0 = now_iso(), time.monotonic()
        state = JobState(started_at=started_at)
        try:
            image = await self._attempt_with_retries(spec, state)
        except Stopped:
            if state.cost_usd > 0 and state.last_error is not None:
                # Stopped between billed attempts: the job runs again, but its spend is kept.
                await self.recorder.failure(spec, state, state.last_error, started_at,
                                            time.monotonic() - t0, retryable=True)
            return Outcome.PENDING
        except e.FatalError as exc:
            self.recorder.note_error(exc)  # the run was stopped when the answer came in
            return Outcome.PENDING
        except e.APIError as exc:
            self.recorder.note_error(exc)
            await self.recorder.failure(spec, state, exc, started_at, time.monotonic() - t0)
            return Outcome.PENDING if is_retryable(exc) else Outcome.FAILED
        recording = self.recorder.success(spec, state, image, started_at, time.monotonic() - t0)
        del image  # the store gets the only reference to the bytes (see Recorder.success)
        await recording
        return Outcome.SUCCEEDED

    async def _attempt_with_retries(self, spec: JobSpec, state: JobState) -> GeneratedImage:
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
                raise Abandoned

        retrying = AsyncRetrying(stop=stop_never, retry=retry, wait=wait, sleep=sleep, reraise=True)
        async for turn in retrying:
            with turn:
                image = await self.attempt(spec, state)
                # Every attempt's line comes from here (-v), the failures' from retry and wait.
                log.debug("%s: attempt %d: ok", spec.job_id, state.attempts)
                return image
        raise AssertionError("unreachable: tenacity re-raises the last error")


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
