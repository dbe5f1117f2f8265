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

Every ledger line written here carries ``extra.batch_line``, the line's number in the results
file. A collection cut short (``kill -9``) is simply run again: lines already in the ledger for
this batch are skipped, so nothing is recorded or charged twice.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from PIL import Image, UnidentifiedImageError

from .. import errors as e
from ..api.response import data_url_bytes, parse_answer
from ..api.retrying import is_retryable
from ..folder.appender import LedgerWriter
from ..folder.batches import BatchRecord, Journal, Phase, seconds_since, spec_from_line
from ..folder.layout import now_iso
from ..folder.ledger import LedgerRecord, iter_ledger
from ..folder.records import failure_record, job_fields, success_record
from ..folder.verdicts import Redos
from ..manifest.references import sniff_image_type
from ..planning.plan import RETRYABLE, SUCCEEDED, LedgerIndex
from ..pricing import PriceTable
from ..spec import JobSpec
from ..store.images import ImageStore
from .wire import BatchAPI, line_error, output_of

log = logging.getLogger(__name__)

CRASH_ENV = "BATCHGEN_TEST_CRASH_AT"
_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: ``BATCHGEN_TEST_CRASH_AT=name`` (or ``name:N``, the Nth time) kills this
    process with SIGKILL right here, so crash tests stop it at a deterministic point."""
    want = os.environ.get(CRASH_ENV)
    if not want:
        return
    point, _, nth = want.partition(":")
    if point != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(slots=True)
class Tally:
    """What one invocation collected."""

    succeeded: int = 0
    failed: int = 0
    failed_permanent: int = 0
    retryable: int = 0
    duplicates: int = 0
    spent_usd: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    # Jobs that came back in this invocation (retryable line, no result, batch ended without
    # results), with how often: what caps their resubmissions.
    comebacks: dict[str, int] = field(default_factory=dict)

    def came_back(self, job_id: str) -> None:
        self.comebacks[job_id] = self.comebacks.get(job_id, 0) + 1

    def note_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Recorder:
    """Writes batch-mode outcomes to the store and the ledger, and keeps the plan's index true."""

    def __init__(self, store: ImageStore, ledger: LedgerWriter, prices: PriceTable,
                 index: LedgerIndex, tally: Tally, redos: Redos | None = None) -> None:
        self.store = store
        # Jobs whose image now is rejected: a result for one is a redo (run --redo-rejected).
        self.redos = redos
        self.ledger = ledger
        self.prices = prices  # at batch prices
        self.index = index
        self.tally = tally

    def _fields(self, spec: JobSpec, *, batch: str | None, started: str, latency: float,
                cost: float, usage: dict[str, Any] | None, line: int | None) -> dict[str, Any]:
        fields = job_fields(spec, attempts=1, usage=usage, cost_usd=cost, latency_s=latency,
                            started_at=started)
        fields.update(mode="batch", batch=batch,
                      extra={} if line is None else {"batch_line": line})
        if self.redos:
            fields.update(self.redos.before_line(spec.job_id))
        return fields

    def _charge(self, cost: float) -> None:
        self.tally.spent_usd += cost
        self.index.cost_usd += cost

    def success_record(self, spec: JobSpec, data: bytes, mime: str, size: tuple[int, int],
                       text: str | None, grounding: Any = None, **kw: Any) -> LedgerRecord:
        return success_record(
            spec, self._fields(spec, **kw), output=self.store.relpath(spec.job_id, mime),
            data=data, mime_type=mime, width=size[0], height=size[1], text=text,
            grounding=grounding,
        )

    async def save_success(self, record: LedgerRecord, data: bytes) -> None:
        """Image and sidecar durable, then the ledger line: the order live mode keeps."""
        line = record.to_line()
        assert record.mime_type is not None
        await self.store.save(record.job_id, data, record.mime_type, sidecar=line)
        self.ledger.append_line(line)
        self.ledger.sync_soon()
        self.index.states[record.job_id] = SUCCEEDED
        self._charge(record.cost_usd)
        self.tally.succeeded += 1

    def duplicate(self, kept: LedgerRecord, cost: float, line: int) -> None:
        """A further billed line for a job already kept: its cost, on a copy of the kept record."""
        extra = {**kept.extra, "batch_line": line, "duplicate": True}
        record = replace(kept, cost_usd=round(cost, 6), finished_at=now_iso(), extra=extra)
        self.ledger.append(record)
        self.ledger.sync_soon()
        self._charge(record.cost_usd)
        self.tally.duplicates += 1

    def failure(self, spec: JobSpec, exc: e.APIError, *, cost: float = 0.0, **kw: Any) -> None:
        retryable = is_retryable(exc) or isinstance(exc, e.DailyQuotaError)
        record = failure_record(self._fields(spec, cost=cost, usage=exc.usage, **kw), exc,
                                retryable=retryable, message=e.APIError.__str__(exc))
        self.ledger.append(record)
        self.ledger.sync_soon()
        self.index.states[spec.job_id] = RETRYABLE if retryable else exc.kind.value
        self._charge(record.cost_usd)
        self.tally.failed += 1
        if retryable:
            self.tally.retryable += 1
            self.tally.came_back(spec.job_id)
        else:
            self.tally.failed_permanent += 1
        self.tally.note_error(exc.kind.value)


def decode_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """The image's real type (from its bytes) and pixel size; BadResponseError if it is none."""
    mime = sniff_image_type(data)
    if mime is None or mime not in ("image/png", "image/jpeg", "image/webp"):
        raise e.BadResponseError(f"the image bytes are not PNG, JPEG or WebP ({len(data)} bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise e.BadResponseError(f"the image does not decode: {exc}") from exc
    if not (size[0] and size[1]):
        raise e.BadResponseError("the image has no size")
    return mime, size


@dataclass(slots=True)
class _Done:
    """What the ledger already holds for one batch (a collection that was cut short)."""

    lines: set[int] = field(default_factory=set)
    kept: dict[str, LedgerRecord] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)


def _already_recorded(journal: Journal, batch: str) -> _Done:
    done = _Done()
    for rec in iter_ledger(journal.run_dir / "ledger.jsonl"):
        if rec.batch != batch:
            continue
        line = rec.extra.get("batch_line")
        if isinstance(line, int):
            done.lines.add(line)
        if rec.succeeded:
            done.kept.setdefault(rec.job_id, rec)
        else:
            done.failed.add(rec.job_id)
    return done


async def _lines(api: BatchAPI, output: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Result lines as ``{"key", "response" | "error"}`` objects, from a file or inline."""
    file = output.get("responsesFile")
    if file:
        async for raw in api.download_lines(str(file)):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("%s: a result line that is not JSON (%d bytes), skipped", file,
                            len(raw))
                yield {}
                continue
            yield obj if isinstance(obj, dict) else {}
        return
    inline = output.get("inlinedResponses") or {}
    items = inline.get("inlinedResponses") if isinstance(inline, dict) else inline
    for item in items or []:
        if isinstance(item, dict):
            meta = item.get("metadata") or {}
            yield {**item, "key": meta.get("key") if isinstance(meta, dict) else None}


# Saves in flight while the next lines are read: each waits for its fsyncs, and the store's
# writer makes many durable at once, so collecting is not one fsync round-trip per image.
SAVES_IN_FLIGHT = 64


class Collector:
    def __init__(self, api: BatchAPI, journal: Journal, recorder: Recorder,
                 stop: asyncio.Event) -> None:
        self.api = api
        self.journal = journal
        self.rec = recorder
        self.stop = stop
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

    async def collect(self, batch: BatchRecord, op: dict[str, Any]) -> bool:
        """Put every result of a finished batch into the store and ledger; False if stopped
        part-way (Ctrl-C): the rest is collected next time, nothing twice."""
        assert batch.name is not None
        name = batch.name
        output = output_of(op)
        jobs = {str(d["k"]): d for d in self.journal.iter_jobs(batch.display_name)}
        done = _already_recorded(self.journal, name) if batch.collecting else _Done()
        if not batch.collecting:
            self.journal.update(batch.display_name, collecting=True,
                                responses_file=(output or {}).get("responsesFile"))
        seen: set[str] = set()
        try:
            if output is not None:
                await self._read(name, batch, output, jobs, done, seen)
        finally:
            await self._drain()
        if self.stop.is_set():
            return False
        returned = sum(1 for job_id in jobs if job_id not in seen and job_id not in done.kept)
        for job_id in jobs:
            if job_id not in seen and job_id not in done.kept:
                self.rec.index.states.pop(job_id, None)  # pending again: submitted anew
                self.rec.tally.came_back(job_id)
        kept, failed = len(done.kept), len(done.failed - set(done.kept))
        self.journal.update(batch.display_name, phase=Phase.COLLECTED, collecting=False,
                            succeeded=kept, failed=failed, returned=returned)
        await self._clean_up(batch)
        return True

    async def _read(self, name: str, batch: BatchRecord, output: dict[str, Any],
                    jobs: dict[str, dict[str, Any]], done: _Done, seen: set[str]) -> None:
        started = batch.created_at or batch.intent_at
        latency = seconds_since(started) if started else 0.0
        lineno = 0
        async for obj in _lines(self.api, output):
            lineno += 1
            if self.stop.is_set():
                return
            key = obj.get("key")
            d = jobs.get(str(key)) if key is not None else None
            if d is None:
                if obj:
                    log.warning("%s: result line %d has an unknown key %r", name, lineno, key)
                continue
            spec = spec_from_line(d)
            seen.add(spec.job_id)
            if lineno in done.lines:
                continue
            kw = {"batch": name, "started": started, "latency": latency, "line": lineno}
            await self._one(spec, obj, done, kw)
            crash_point("mid_collect")
            if lineno % 64 == 0:
                await asyncio.sleep(0)  # let Ctrl-C and the progress bar in

    async def _one(self, spec: JobSpec, obj: dict[str, Any], done: _Done,
                   kw: dict[str, Any]) -> None:
        job_id = spec.job_id
        kept = done.kept.get(job_id)
        prices = self.rec.prices
        if "response" in obj:
            resp = obj["response"]
            usage = resp.get("usageMetadata") if isinstance(resp, dict) else None
            cost = prices.from_usage(spec, usage) if usage else prices.estimate(spec)
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
            record = self.rec.success_record(spec, data, mime, size, parsed.text,
                                             parsed.grounding, cost=cost, usage=usage, **kw)
            done.kept[job_id] = record  # before it is saved: a duplicate may follow at once
            await self._saving(job_id, self.rec.save_success(record, data))
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
