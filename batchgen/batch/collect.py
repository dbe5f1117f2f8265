"""Collecting a finished batch: its result lines into the store and the ledger, as live mode does.

Each line is read from the streamed responses file (one line in memory at a time), matched to
its job by ``key`` (never by position), parsed by :func:`batchgen.response.parse_answer` and
priced at batch prices. A success is saved exactly as the pool saves one: image and sidecar
durable first (:class:`~batchgen.store.ImageStore`), then the ledger line. Per-line errors go
through the same error tree as live answers: blocked / no-image / invalid are permanent and
recorded once; 429 / 5xx are recorded as retryable, so the job is submitted again.

The service may return one key more than once, each billed. The first success is kept; every
further billed line adds a ledger line for the same job (a copy of the kept record with the
extra cost), so the ledger's spend stays true and its last line per job still names the image.

A batch is collected only when every one of its jobs is accounted for, as far as the service's
own ``batchStats`` say it finished them. A download that ends early, cleanly or not, a line that
does not read, or fewer results than the service counted: the file is downloaded again (with
:func:`~batchgen.api.retrying.should_retry`'s backoff), lines already recorded are skipped,
and the file is neither deleted from the service nor its jobs resubmitted until it has been
read whole. A line still unreadable after that is charged as a failed job; so is every job the
service counted whose results file is gone (403/404): :class:`~batchgen.errors.ResultLostError`.
Jobs the service says it did not finish go back to pending.

Every ledger line written here carries ``extra.batch_line``, the line's number in the results
file. A collection cut short (``kill -9``) is simply run again: lines already in the ledger for
this batch are skipped, so nothing is recorded or charged twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any

from .. import errors as e
from ..aio import wait_event
from ..api.http_body import ANSWER_MAX_BYTES, MiB
from ..api.response import data_url_bytes, parse_answer
from ..api.retrying import RetryPolicy, backoff_delay, should_retry
from ..folder.batches import BatchRecord, Journal, Phase, seconds_since, spec_from_line
from ..spec import JobSpec
from ..store.digest import image_sha256
from .recorder import Recorder as Recorder
from .recorder import Tally as Tally
from .recorder import crash_point as crash_point
from .recorder import decode_image
from .results import (
    Done,
    Line,
    Pass,
    Reading,
    UnknownKeys,
    already_recorded,
    file_lines,
    inline_lines,
)
from .wire import BatchAPI, line_error, output_of, stats_of

log = logging.getLogger(__name__)


class Verdict(str, enum.Enum):
    COLLECTED = "collected"  # every job accounted for; the service's copies deleted
    CLOSED = "closed"  # its results file is gone: what was billed is charged, the rest pending
    UNFINISHED = "unfinished"  # not read whole yet: nothing resubmitted, nothing deleted
    STOPPED = "stopped"  # Ctrl-C part-way: the rest next time, nothing twice


# Saves in flight while the next lines are read: each waits for its fsyncs, and the store's
# writer makes many durable at once, so collecting is not one fsync round-trip per image.
SAVES_IN_FLIGHT = 64


class Collector:
    def __init__(self, api: BatchAPI, journal: Journal, recorder: Recorder,
                 stop: asyncio.Event, policy: RetryPolicy | None = None) -> None:
        self.api = api
        self.journal = journal
        self.rec = recorder
        self.stop = stop
        self.policy = policy or api.policy
        self._slots = asyncio.Semaphore(SAVES_IN_FLIGHT)
        self._saves: set[asyncio.Task[None]] = set()
        self._by_job: dict[str, asyncio.Task[None]] = {}

    async def _saving(self, job_id: str, save: Coroutine[Any, Any, None]) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(save)
        self._saves.add(task)
        self._by_job[job_id] = task
        task.add_done_callback(lambda t: self._saved(job_id, t))

    def _saved(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._slots.release()
        if self._by_job.get(job_id) is task:
            del self._by_job[job_id]
        if task.cancelled() or task.exception() is None:
            self._saves.discard(task)  # a failed one stays, for _drain to raise

    async def _kept_saved(self, job_id: str) -> None:
        """A line about a job whose image is still being saved waits for that save: no ledger
        line may name an image before the image is on disk."""
        task = self._by_job.get(job_id)
        if task is not None:
            await asyncio.wait([task])

    async def _drain(self) -> None:
        """Wait for every save in flight; a failed save (a full disk) stops the run."""
        saves, self._saves = self._saves, set()
        results = await asyncio.gather(*saves, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def collect(self, batch: BatchRecord, op: dict[str, Any]) -> Verdict:
        """Put every result of a finished batch into the store and ledger, or say why not."""
        assert batch.name is not None
        output = output_of(op)
        jobs = {str(d["k"]): d for d in self.journal.iter_jobs(batch.display_name)}
        done = already_recorded(self.journal, batch.name) if batch.collecting else Done()
        if not batch.collecting:
            self.journal.update(batch.display_name, collecting=True,
                                responses_file=(output or {}).get("responsesFile"))
        stats = stats_of(op)
        processed = stats["successfulRequestCount"] + stats["failedRequestCount"]
        billed = stats["successfulRequestCount"]
        if not processed:  # no counts on the wire: every request may have been billed
            processed = billed = len(jobs)
        r = Reading(jobs, done, min(processed, len(jobs)), min(billed, len(jobs)))
        try:
            verdict = await self._read_whole(batch, output or {}, r)
        finally:
            await self._drain()
        if self.stop.is_set():
            return Verdict.STOPPED
        if verdict is Verdict.UNFINISHED:
            return verdict
        lost, charged, returned = self._settle(batch, r)
        kept, failed = len(done.kept), len(done.failed - set(done.kept))
        phase = Phase.CLOSED if r.gone else Phase.COLLECTED
        note = ""
        if r.gone:
            note = (f"{r.gone}: {lost} results lost, charged ${charged:.2f} estimated; "
                    f"{returned} jobs pending again")
            log.warning("%s (%s): %s", batch.name, batch.display_name, note)
        self.journal.update(batch.display_name, phase=phase, collecting=False, succeeded=kept,
                            failed=failed, returned=returned, lost=lost, note=note)
        await self._clean_up(batch)
        return verdict

    async def _read_whole(self, batch: BatchRecord, output: dict[str, Any],
                          r: Reading) -> Verdict:
        """Download and read until every job the service finished is accounted for, as
        :func:`should_retry` allows; a transport error or a short file is one more try."""
        assert batch.name is not None
        file = output.get("responsesFile")
        attempt = 0
        while True:
            attempt += 1
            got = Pass()
            r.unkeyed = 0
            r.downloads += 1
            problem: e.APIError | None
            try:
                source = (file_lines(self.api, str(file), len(r.jobs), got) if file
                          else inline_lines(output))
                if not await self._unless_stopped(self._read(batch, source, r)):
                    return Verdict.STOPPED
            except (e.AuthError, e.ModelNotFoundError) as exc:
                if not file or not exc.answered:
                    raise
                # The batch was just read with this key: the file is gone, not the key wrong.
                r.gone = (f"its results file {file} is gone (HTTP {exc.http_status}: deleted, "
                          "or past its 48 h life)")
                return Verdict.CLOSED
            except e.TransientError as exc:
                problem = exc
            else:
                problem = self._short(str(file or "the inline results"), got, r)
                if problem is None or not file:
                    return Verdict.COLLECTED
            if not should_retry(problem, attempt=attempt, stochastic_failures=0,
                                policy=self.policy):
                break
            delay = backoff_delay(problem, attempt=attempt, policy=self.policy)
            log.warning("%s: %s; downloading the results again in %.1fs", batch.name,
                        problem.message, delay)
            if await wait_event(self.stop, delay):
                return Verdict.STOPPED
        if isinstance(problem, e.BadResponseError) and not got.torn:
            return Verdict.COLLECTED  # whole, as often as read: what does not read is charged
        log.warning("%s: its results could not be read whole after %d downloads (%s); nothing "
                    "is resubmitted or deleted, the next run downloads them again", batch.name,
                    attempt, problem.message)
        return Verdict.UNFINISHED

    def _short(self, file: str, got: Pass, r: Reading) -> e.BadResponseError | None:
        """Why this download does not account for every job the service finished, if so."""
        if got.torn:
            return e.BadResponseError(f"{file}: the download ended inside line {got.lines}")
        if r.bad or r.unkeyed:  # a billed copy of a kept result is money too
            return e.BadResponseError(
                f"{file}: {len(r.bad) + r.unkeyed} result lines could not be read")
        if not r.unread():
            return None
        accounted = len(r.accounted())
        if accounted < r.processed:
            return e.BadResponseError(
                f"{file}: results for {accounted} of the {r.processed} requests the service "
                "finished")
        return None  # the service says it did not finish the rest: they go back to pending

    async def _unless_stopped(self, work: Awaitable[None]) -> bool:
        """Run ``work`` unless Ctrl-C comes first (a download that stalls is not waited out)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()
        return not self.stop.is_set()

    async def _read(self, batch: BatchRecord, source: AsyncIterator[Line], r: Reading) -> None:
        assert batch.name is not None
        name = batch.name
        started = batch.created_at or batch.intent_at
        latency = seconds_since(started) if started else 0.0
        unknown = UnknownKeys(name)
        count = 0
        try:
            async for line in source:
                if self.stop.is_set():
                    return
                kw = {"batch": name, "started": started, "latency": latency,
                      "line": line.number}
                d = r.jobs.get(line.key) if line.key is not None else None
                if line.obj is None:
                    self._unreadable(line, d, r, kw)
                    continue
                if d is None:
                    unknown.saw(line.number, line.key)
                    continue
                spec = spec_from_line(d)
                r.seen.add(spec.job_id)
                r.bad.pop(line.number, None)
                if line.number in r.done.lines:
                    continue
                await self._one(spec, line.obj, r.done, kw)
                r.done.lines.add(line.number)
                crash_point("mid_collect")
                count += 1
                if count % 64 == 0:
                    await asyncio.sleep(0)  # let Ctrl-C and the progress bar in
        finally:
            unknown.summary()

    def _unreadable(self, line: Line, d: dict[str, Any] | None, r: Reading,
                    kw: dict[str, Any]) -> None:
        """A line that does not read: an oversized one is its job's failure at once (it
        would be as big next time); one that is not JSON waits for the next download."""
        if line.torn:
            return
        if d is None:
            r.unkeyed += 1
            return
        if line.number in r.done.lines:
            return
        spec = spec_from_line(d)
        job_id = spec.job_id
        if not line.problem.endswith("size cap"):
            r.bad[line.number] = line  # read again with the next download
            return
        cost = self.rec.prices.estimate(spec) if line.response else 0.0
        kept = r.done.kept.get(job_id)
        if kept is not None:
            self.rec.duplicate(kept, cost, line.number)
        elif job_id not in r.done.failed:
            r.done.failed.add(job_id)
            cap = ANSWER_MAX_BYTES // MiB
            self.rec.failure(spec, e.BodyTooLargeError(
                f"result line {line.number} is over the {cap} MiB cap", maybe_billed=True),
                cost=cost, **kw)
        r.done.lines.add(line.number)

    def _settle(self, batch: BatchRecord, r: Reading) -> tuple[int, float, int]:
        """Jobs still unread once the file is read whole (or gone): the ones the service
        counted are charged as lost, the rest go back to pending. (lost, charged, returned)"""
        assert batch.name is not None
        started = batch.created_at or batch.intent_at
        base = {"batch": batch.name, "started": started,
                "latency": seconds_since(started) if started else 0.0}
        charged = 0.0
        lost = 0
        for number, line in sorted(r.bad.items()):
            assert line.key is not None
            job_id = line.key
            spec = spec_from_line(r.jobs[job_id])
            cost = self.rec.prices.estimate(spec) if line.response else 0.0
            kept = r.done.kept.get(job_id)
            if kept is not None or job_id in r.seen or job_id in r.done.failed:
                if cost and kept is not None:
                    self.rec.duplicate(kept, cost, number)  # a billed copy we cannot read
                    charged += cost
                continue
            if line.response:
                r.done.responded.add(job_id)
            self.rec.failure(spec, e.ResultLostError(
                f"result line {number} still does not read after {r.downloads} "
                f"downloads: {line.problem}", maybe_billed=line.response),
                cost=cost, line=number, **base)
            r.done.failed.add(job_id)
            charged += cost
            lost += 1
        r.bad.clear()
        # Which unread job is which of the service's counts cannot be known: as many as it
        # says succeeded (billed) beyond those read are lost and charged; the rest, which it
        # failed or never ran, were not billed and go back to pending.
        rest = r.unread()
        n_lost = min(len(rest), max(0, r.billed - len(r.done.responded & set(r.jobs))))
        why = r.gone or "the results file holds no readable line for it"
        for job_id in rest[:n_lost]:
            spec = spec_from_line(r.jobs[job_id])
            cost = self.rec.prices.estimate(spec)
            self.rec.failure(spec, e.ResultLostError(
                f"{why}; the service counted this request as succeeded (billed)",
                maybe_billed=True), cost=cost, line=None, **base)
            r.done.failed.add(job_id)
            charged += cost
            lost += 1
        returned = rest[n_lost:]
        for job_id in returned:
            self.rec.index.states.pop(job_id, None)  # pending again: submitted anew
            self.rec.tally.came_back(job_id)
        return lost, charged, len(returned)

    async def _one(self, spec: JobSpec, obj: dict[str, Any], done: Done,
                   kw: dict[str, Any]) -> None:
        job_id = spec.job_id
        kept = done.kept.get(job_id)
        prices = self.rec.prices
        if "response" in obj:
            resp = obj["response"]
            usage = resp.get("usageMetadata") if isinstance(resp, dict) else None
            cost = prices.from_usage(spec, usage) if usage else prices.estimate(spec)
            done.responded.add(job_id)
            if kept is not None:
                await self._kept_saved(job_id)
                self.rec.duplicate(kept, cost, kw["line"])  # billed again; keep the first
                return
            try:
                parsed = parse_answer(resp)
                if parsed.data is not None:
                    data = parsed.data
                elif parsed.url is not None and parsed.url.startswith("data:"):
                    data, _ = data_url_bytes(parsed.url)
                else:
                    raise e.BadResponseError("a batch answer with an image URL, not its bytes")
                mime, size = decode_image(data)
            except e.APIError as exc:
                if job_id in done.failed:
                    return  # recorded once
                exc.usage = exc.usage or usage
                done.failed.add(job_id)
                self.rec.failure(spec, exc, cost=cost, **kw)
                return
            sha = await image_sha256(data)
            record = self.rec.success_record(spec, data, mime, size, parsed.text,
                                             parsed.grounding, sha, cost=cost, usage=usage, **kw)
            done.kept[job_id] = record  # before it is saved: a duplicate may follow at once
            await self._saving(job_id, self.rec.save_success(record, data, parsed.turn))
        elif "error" in obj:
            if kept is not None or job_id in done.failed:
                return  # an error line beside a result already recorded: nothing new
            done.failed.add(job_id)
            self.rec.failure(spec, line_error(obj["error"]), **kw)
        else:
            log.warning("%s: result line %d for %s has neither response nor error",
                        kw["batch"], kw["line"], job_id)

    async def _clean_up(self, batch: BatchRecord) -> None:
        """Delete the service's copies (request and results) and the local job list."""
        names = [n for n in (batch.input_file, self.journal.records[batch.display_name]
                             .responses_file) if n]
        try:
            for n in names:
                await self.api.delete_file(n)
        except e.APIError as exc:
            log.warning("could not delete %s from the service (it expires in 48 h): %s",
                        ", ".join(names), exc)
        else:
            self.journal.update(batch.display_name, files_deleted=True)
        for path in (self.journal.jobs_path(batch.display_name),
                     self.journal.requests_path(batch.display_name)):
            path.unlink(missing_ok=True)
