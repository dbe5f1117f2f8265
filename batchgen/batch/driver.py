"""``batchgen run --mode batch`` from top to bottom, and ``batchgen cancel``.

One pass: finish what an earlier run left unnamed (look up, then create), poll the folder's
batches and collect every finished one, then submit what still needs doing (new jobs, jobs of
expired / failed / cancelled batches, retryable lines). Without ``--wait`` it then exits 5 while
batches run; with it, it sleeps and goes round again until every job is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from .. import errors as e
from ..aio import wait_event
from ..api.client import GeminiClient
from ..api.retrying import RetryPolicy
from ..exits import ExitCode
from ..folder.appender import LedgerWriter
from ..folder.batches import BatchRecord, Journal, Phase, record_seen
from ..folder.verdicts import Redos, rejected_jobs
from ..planning.plan import IN_BATCH, Plan, manifest_meta
from ..planning.prepare import Prepared
from ..planning.recall import run_with
from ..planning.session import command_line, endpoint, install_signals, settings_meta
from ..pricing import PriceTable
from ..progress import Progress
from ..redact import redact
from ..settings import ClientSettings, RunOptions, Selection
from ..spec import JobSpec, Provider
from ..store.images import ImageStore
from ..words import plural
from .collect import Collector, Recorder, Tally, Verdict
from .submit import Submitted, Submitter
from .watch import Watch
from .waves import Waves
from .wire import FINAL_STATES, BatchAPI, batch_info, output_of, stats_of

log = logging.getLogger(__name__)

MAX_POLL_FACTOR = 10.0  # --wait backs off to at most this many --poll-interval between polls


def check_provider(provider: Provider) -> None:
    if provider is not Provider.GOOGLE:
        raise e.InputError(
            f"--mode batch needs a provider with the Batch API (google), not {provider.value}; "
            "use --provider google, or --mode live"
        )


@dataclass(frozen=True, slots=True)
class BudgetStop:
    """Why a run stopped at --budget, and what budget would let it submit the rest."""

    budget_usd: float
    spent_usd: float  # the folder's spend, and what earlier runs' requests may still bill
    pending: int
    estimate_usd: float  # the pending jobs, typically, at batch prices
    needed_usd: float  # spent + every pending job's reserve: a budget under which all fit
    margin: float  # the duplicate margin each reserve carries (0.25: worst case + 25%)


@dataclass(slots=True)
class Outcome:
    code: ExitCode
    finished: bool  # every job settled: refresh the gallery
    budget: BudgetStop | None = None  # exit 3: the CLI words the way on


class BatchRun:
    def __init__(self, prep: Prepared, options: RunOptions, say: Callable[[str], None]) -> None:
        self.say = say
        self.prep = prep
        self.options = options
        self.target = options.target
        self.batch = options.batch
        self.journal = Journal(prep.folder.path)
        self.prices = PriceTable.load(self.target.prices, batch=True)
        self.tally = Tally()
        self.stop = asyncio.Event()
        self.interrupted = False
        self.submitted = Submitted()
        self.new_jobs = 0
        self.exhausted: set[str] = set()  # retryable, but out of attempts in this invocation
        self.budget_cut = False
        self.bar = Watch(tty=False, log_every_s=0.0)
        self.submitter: Submitter | None = None

    def _interrupt(self, signame: str = "SIGINT") -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self.stop.set()
        Progress.write("stopping: nothing is lost, the service goes on with the batches; Ctrl-C "
                       "again to quit at once")

    async def run(self) -> Outcome:
        prep = self.prep
        folder = prep.folder
        store = ImageStore(folder.path, thumbnails=self.options.ui.gallery)
        store.prepare()
        # A request file still being written when a run died: no intent names it, so no
        # batch was made from it (its jobs are planned again).
        for tmp in self.journal.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        ledger = LedgerWriter(folder.ledger_path)
        ledger.open()
        meta = folder.read_meta()
        folder.update_meta(
            **manifest_meta(self.target.manifest), jobs=prep.counts.total,
            model=prep.manifest.header.model, provider=prep.client.provider.value,
            base_url=redact(self.target.base_url or prep.client.base_url),
            settings=settings_meta(self.options), run_with=run_with(self.target),
            state="running", mode="batch",
            runs=int(meta.get("runs", 0)) + 1, command=command_line(),
        )
        # Computed afresh: the batch that redoes a rejected image may be collected by a later
        # run, without --redo-rejected.
        redos = Redos(folder.path, rejected_jobs(folder.path))
        recorder = Recorder(store, ledger, self.prices, prep.plan.index, self.tally, redos)
        ui = self.options.ui
        bar = self.bar = Watch(tty=sys.stderr.isatty(), enabled=ui.progress,
                               log_every_s=ui.log_every_s if self.batch.wait else 0.0)
        loop = asyncio.get_running_loop()
        restore = install_signals(loop, self._interrupt)
        try:
            settings = self.options.settings
            # Batch calls retry as live requests do: --backoff sets the first wait.
            policy = RetryPolicy(max_attempts=6, backoff_initial_s=settings.backoff_initial_s,
                                 backoff_max_s=30.0)
            async with endpoint(prep.client, self.target.fake) as cs, \
                    BatchAPI(cs, policy) as api, GeminiClient(cs) as client:
                return await self._loop(api, client, recorder, bar)
        finally:
            restore()
            bar.close()
            store.close()
            with contextlib.suppress(e.StorageError):
                ledger.close()

    async def _loop(self, api: BatchAPI, client: GeminiClient, recorder: Recorder,
                    bar: Watch) -> Outcome:
        collector = Collector(api, self.journal, recorder, self.stop)
        self.waves = Waves(self.prep.plan.lineage if self.prep.manifest.chains else None,
                           self.prep.plan.index.states, recorder)
        submitter = self.submitter = Submitter(api, self.journal, client, recorder, self.batch,
                                               self.options.settings.budget_usd, self.stop)
        interval = self.batch.poll_interval_s
        delay = interval
        first = True
        while True:
            await submitter.resolve_unnamed()
            changed = await self._poll(api, collector)
            if self.stop.is_set():
                return self._finish(False)
            if first or changed:
                sub = await submitter.submit(self._jobs())
                self._add(sub)
                if sub.batches and self.batch.wait:
                    self.say(
                        f"submitted {plural(sub.jobs, 'job')} in {_batches(sub.batches)}; "
                        f"estimated ${sub.estimate_usd:.2f} at batch prices")
            first = False
            if not self.journal.open_records() or not self.batch.wait:
                bar.show(self.journal, self.tally)
                return self._finish(True)
            delay = interval if changed else min(delay * 1.5, interval * MAX_POLL_FACTOR)
            bar.show(self.journal, self.tally, delay)
            if await wait_event(self.stop, delay):
                return self._finish(False)

    def _add(self, sub: Submitted) -> None:
        self.submitted.jobs += sub.jobs
        self.submitted.batches += sub.batches
        self.submitted.estimate_usd += sub.estimate_usd
        self.budget_cut = sub.budget_cut

    def _jobs(self) -> Iterator[JobSpec]:
        """What still needs doing, as live mode would plan it; --limit counts distinct jobs of
        this invocation, and a job is submitted at most --max-attempts times in it (only jobs
        that came back are remembered for that, so memory does not grow with the manifest)."""
        sel: Selection = self.prep.plan.selection
        plan = Plan(self.prep.manifest.iter_jobs, self.prep.plan.index, replace(sel, limit=None))
        plan.lineage = self.prep.plan.lineage
        cap = self.options.settings.max_attempts
        comebacks = self.tally.comebacks
        for job in self.waves.ready(plan):  # chains: each wave once its parents are collected
            n = comebacks.get(job.job_id, 0)
            if n >= cap:
                self.exhausted.add(job.job_id)
                continue
            if n == 0:
                if sel.limit is not None and self.new_jobs >= sel.limit:
                    continue
                self.new_jobs += 1
            yield job

    async def _poll(self, api: BatchAPI, collector: Collector) -> int:
        """Poll every created batch; collect or close each finished one. How many finished.

        A transient fault (after the wire's own retries) leaves that batch open for the next
        poll, as a fault in any request would: --wait goes on, a single pass exits 5."""
        finished = 0
        seen: dict[str, str] = {}
        try:
            finished = await self._poll_each(api, collector, seen)
        finally:
            record_seen(self.prep.folder.path, seen)
        return finished

    async def _poll_each(self, api: BatchAPI, collector: Collector, seen: dict[str, str]) -> int:
        finished = 0
        for rec in [r for r in self.journal.open_records() if r.name is not None]:
            assert rec.name is not None
            try:
                op = await api.get(rec.name)
            except e.ModelNotFoundError:  # 404: deleted on the service; nothing to collect
                self._close(rec, "deleted")
                finished += 1
                continue
            except e.TransientError as exc:
                log.warning("%s: could not be polled (%s); trying again later", rec.name, exc)
                continue
            state = str(batch_info(op).get("state") or "")
            seen[rec.display_name] = state
            if state != rec.state:
                self.journal.update(rec.display_name, state=state, counts=stats_of(op))
            if state not in FINAL_STATES:
                continue
            if output_of(op) is not None:
                verdict = await collector.collect(rec, op)
                if verdict is Verdict.STOPPED:
                    return finished  # stopped part-way
                if verdict is not Verdict.UNFINISHED:
                    finished += 1
            elif state == "BATCH_STATE_SUCCEEDED":
                continue  # succeeded a moment before its output shows: poll again
            else:
                self._close(rec, state)
                with contextlib.suppress(e.APIError):
                    if rec.input_file:
                        await api.delete_file(rec.input_file)
                finished += 1
        return finished

    def _close(self, rec: BatchRecord, state: str) -> None:
        """A batch over with no results: its jobs are pending again and get submitted anew."""
        states = self.prep.plan.index.states
        comebacks = self.tally.comebacks
        for d in self.journal.iter_jobs(rec.display_name):
            job_id = str(d["k"])
            if states.get(job_id) == IN_BATCH:
                del states[job_id]
                comebacks[job_id] = comebacks.get(job_id, 0) + 1
        self.journal.update(rec.display_name, phase=Phase.CLOSED, state=state,
                            returned=rec.jobs)
        log.warning("%s (%s) ended %s: its %d jobs are submitted again", rec.name,
                    rec.display_name, state, rec.jobs)
        self.journal.jobs_path(rec.display_name).unlink(missing_ok=True)

    def _finish(self, settled_pass: bool) -> Outcome:
        self.bar.close()  # before the summary lines
        t = self.tally
        if t.succeeded or t.failed or t.duplicates:
            errs = ", ".join(f"{k} {v}" for k, v in sorted(t.errors.items()))
            self.say(
                f"collected: {t.succeeded} succeeded, {t.failed} failed"
                + (f" ({errs})" if errs else "")
                + (f", {t.duplicates} duplicate results billed" if t.duplicates else "")
                + f"; ${t.spent_usd:.2f} at batch prices")
        open_recs = self.journal.open_records()
        cmd = command_line()
        ended = [r for r in open_recs if r.state in FINAL_STATES]
        running = len(open_recs) - len(ended)
        if not settled_pass:
            self.say(f"stopped; {_open_words(running, len(ended))}; to collect: {cmd}")
            return Outcome(ExitCode.INTERRUPTED, False)
        if open_recs:
            jobs = sum(r.jobs for r in open_recs)
            if self.budget_cut:
                self.say("budget: the remaining jobs do not fit in --budget next to the "
                           "running batches' worst case")
            sub = self.submitted
            if sub.batches:
                self.say(f"submitted {plural(sub.jobs, 'job')} in {_batches(sub.batches)}, "
                         f"estimated ${sub.estimate_usd:.2f} at batch prices")
            self.say(f"{jobs} jobs in {_open_words(running, len(ended))}; re-run this "
                       f"command to collect: {cmd}")
            return Outcome(ExitCode.RUNNING, False)
        typical = [0.0]

        def reserve(spec: JobSpec) -> float:
            typical[0] += self.prices.estimate(spec)
            return self.prices.reserve(spec)

        counts = self.prep.plan.count(reserve if self.budget_cut else None)
        if self.budget_cut and counts.pending and self.submitter is not None:
            factor = self.submitter.reserve_factor()
            committed = self.submitter.committed_usd()
            stop = BudgetStop(
                budget_usd=self.options.settings.budget_usd or 0.0, spent_usd=committed,
                pending=counts.pending, estimate_usd=typical[0],
                needed_usd=committed + counts.estimate_usd * factor, margin=factor - 1.0)
            return Outcome(ExitCode.BUDGET, True, stop)
        failed = counts.failed_skipped + len(self.exhausted)
        self.say(f"done: {counts.done} of {counts.total} succeeded, {failed} failed; "
                   f"spent ${self.prep.plan.index.cost_usd:.2f}; images in "
                   f"{self.prep.folder.path / 'images'}")
        if counts.failed_skipped:
            self.say(f"to retry the permanent failures: {cmd} --retry-failed")
        return Outcome(ExitCode.FAILED if failed else ExitCode.OK, True)


def _batches(n: int) -> str:
    return f"{n} batch{'es' if n != 1 else ''}"


def _open_words(running: int, ended: int) -> str:
    """Open batches as they are: a finished one whose results are not all in is not running."""
    parts = []
    if running:
        parts.append(f"{_batches(running)} still running on the service (they keep running "
                     "without batchgen)")
    if ended:
        parts.append(f"{_batches(ended)} finished, results not collected yet (they wait on "
                     "the service)")
    return " and ".join(parts) or "no batches open"


def run_batch(prep: Prepared, options: RunOptions, say: Callable[[str], None]) -> Outcome:
    """One ``run --mode batch``; ``say`` reports progress and the outcome (the CLI: stderr)."""
    check_provider(prep.client.provider)
    runner = BatchRun(prep, options, say)
    state = "finished"
    try:
        outcome = asyncio.run(runner.run())
        state = {ExitCode.RUNNING: "batches running", ExitCode.INTERRUPTED: "interrupted",
                 ExitCode.BUDGET: "budget"}.get(outcome.code, "finished")
        return outcome
    except (e.FatalError, e.PermanentError, e.TransientError) as exc:
        state = "fatal"
        say(redact(f"batchgen: stopped: {exc}"))
        say(f"fix the cause, then resume with: {command_line()}")
        return Outcome(ExitCode.FATAL, False)
    except KeyboardInterrupt:
        state = "interrupted"
        say(f"interrupted; the batches keep running; to collect: {command_line()}")
        return Outcome(ExitCode.INTERRUPTED, False)
    finally:
        with contextlib.suppress(e.StorageError):
            prep.folder.update_meta(state=state)


# -- cancel ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cancelled:
    batches: int  # cancelled on the service
    jobs: int  # their jobs, pending again
    finished: tuple[str, ...] = ()  # finished before cancel: what the next run does with each


async def cancel_batches(run_dir_settings: ClientSettings, journal: Journal,
                         confirm: Callable[[list[BatchRecord]], bool]) -> Cancelled:
    """Cancel the folder's open batches; their jobs go back to pending. A batch that finished
    first is left for the next run to collect: its results were billed."""
    async with BatchAPI(run_dir_settings) as api:
        unnamed = [r for r in journal.open_records() if r.name is None]
        if unnamed:
            found = await api.find({r.display_name for r in unnamed})
            for rec in unnamed:
                op = found.get(rec.display_name)
                if op is None:  # never created: nothing runs, nothing to cancel
                    journal.update(rec.display_name, phase=Phase.CLOSED, note="never created")
                    journal.jobs_path(rec.display_name).unlink(missing_ok=True)
                else:
                    journal.update(rec.display_name, phase=Phase.CREATED, name=op.get("name"),
                                   state=batch_info(op).get("state") or "")
        targets = [r for r in journal.open_records() if r.name is not None]
        if not targets or not confirm(targets):
            return Cancelled(0, 0)
        jobs = 0
        cancelled = 0
        finished: list[str] = []
        for rec in targets:
            assert rec.name is not None
            op = await api.get(rec.name)
            state = str(batch_info(op).get("state") or "")
            if state not in FINAL_STATES:
                await api.cancel(rec.name)
                op = await api.get(rec.name)
                state = str(batch_info(op).get("state") or "BATCH_STATE_CANCELLED")
            output = output_of(op)
            if output is not None:
                # Finished (or cancelled with results): the next run collects it, nothing lost;
                # one whose results file is gone is closed by it, its billed results charged.
                journal.update(rec.display_name, state=state, counts=stats_of(op))
                file = output.get("responsesFile")
                if file and await api.get_file(str(file)) is None:
                    finished.append(
                        f"{rec.name} finished, but its results file {file} is gone: the next "
                        "run closes it, charges the results the service billed (estimated) "
                        "and returns the jobs it did not bill to pending")
                else:
                    finished.append(f"{rec.name} finished: the next run collects its results")
                continue
            cancelled += 1
            journal.update(rec.display_name, phase=Phase.CLOSED, state=state, returned=rec.jobs,
                           note="cancelled")
            journal.jobs_path(rec.display_name).unlink(missing_ok=True)
            if rec.input_file:
                with contextlib.suppress(e.APIError):
                    await api.delete_file(rec.input_file)
            jobs += rec.jobs
        return Cancelled(cancelled, jobs, tuple(finished))
