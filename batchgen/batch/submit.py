"""Submitting: request files written, references uploaded once, batches created never twice.

For each batch, in this order, every step durable before the next:

1. the request lines (``{"key": job id, "request": GenerateContentRequest}``) and the job list
   are written to ``DIR/batches/`` and fsync'd;
2. the intent (display name, files, jobs, the budget it reserves) goes into the journal;
3. the request file is uploaded (resumable) and its name recorded;
4. the batch is created and its name recorded.

A create that fails with a 5xx, a timeout or a dropped connection may have created the batch
anyway: the batch is looked up by its display name before anything else happens. So is every
intent without a recorded name when a run starts (a crash, ``kill -9`` or Ctrl-C in between).

References: each distinct reference image is uploaded once through the Files API and named in
every line that uses it as ``fileData {fileUri, mimeType}``, instead of riding base64-encoded in
each line. An upload is reused for new batches while it is younger than :data:`REF_REUSE_S`
(uploaded files live 48 h, a batch may take 24 h).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from .. import errors as e
from ..api.client import GeminiClient, source_prefix
from ..api.request import turn_body
from ..catalog import result_line_bytes
from ..folder.batches import BatchRecord, Journal, Phase, digest_ids, jobs_line, seconds_since
from ..folder.durable import commit_tmp
from ..manifest.references import load_reference_bytes
from ..planning.plan import IN_BATCH
from ..settings import BatchSettings
from ..spec import JobSpec, Reference, Turn
from .collect import Recorder, crash_point
from .margin import duplicate_margin
from .wire import BatchAPI, batch_info

log = logging.getLogger(__name__)

REF_REUSE_S = 24 * 3600.0
CREATE_ATTEMPTS = 4


@dataclass(slots=True)
class Submitted:
    jobs: int = 0
    batches: int = 0
    estimate_usd: float = 0.0
    budget_cut: bool = False  # a job that was wanted did not fit in the budget


class Submitter:
    def __init__(self, api: BatchAPI, journal: Journal, client: GeminiClient,
                 recorder: Recorder, settings: BatchSettings, budget_usd: float | None,
                 stop: asyncio.Event) -> None:
        self.stop = stop  # Ctrl-C: no new batch is started; the one being created finishes
        self.api = api
        self.journal = journal
        self.client = client  # builds request bodies and fetches URL references; sends nothing
        self._bad_urls: dict[str, str] = {}
        self.rec = recorder
        self.settings = settings
        self.budget_usd = budget_usd

    # -- money ------------------------------------------------------------------------------

    def reserve_factor(self) -> float:
        """What a job of a new batch holds back, as a multiple of its worst case: 1 plus the
        duplicate margin from every result this folder has collected (:mod:`.margin`)."""
        index, tally = self.rec.index, self.rec.tally
        return 1.0 + duplicate_margin(index.batch_results + tally.succeeded,
                                      index.batch_duplicates + tally.duplicates)

    def committed_usd(self) -> float:
        """Spent (the ledger), plus the worst case of every batch that may still bill and of
        live requests an earlier run sent without recording their outcome."""
        held = sum(r.reserve_usd for r in self.journal.records.values() if r.phase.open)
        return self.rec.index.cost_usd + held + self.rec.index.unsettled.usd

    # -- finishing what an earlier run started ------------------------------------------------

    async def resolve_unnamed(self) -> None:
        """Intents without a batch name: look each up by display name, and only if it is not
        on the service, create it (uploading its request file again if need be)."""
        unnamed = [r for r in self.journal.open_records() if r.name is None]
        if not unnamed:
            return
        found = await self.api.find({r.display_name for r in unnamed})
        for rec in unnamed:
            op = found.get(rec.display_name)
            if op is not None:
                log.info("%s: found on the service as %s", rec.display_name, op.get("name"))
                self._record_created(rec, op)
            else:
                await self._create(rec)

    # -- new batches ------------------------------------------------------------------------

    async def submit(self, jobs: Iterable[JobSpec]) -> Submitted:
        """Put ``jobs`` into batches of at most ``batch_size`` jobs and ``max_file_bytes``,
        each cut short where the budget ends."""
        out = Submitted()
        group = _Group(self.journal)
        budget = self.budget_usd
        committed = self.committed_usd()
        factor = self.reserve_factor()
        for spec in jobs:
            if self.stop.is_set():
                break
            reserve = self.rec.prices.reserve(spec) * factor
            if budget is not None and committed + group.reserve_usd + reserve > budget:
                out.budget_cut = True
                break
            try:
                line = await self._request_line(spec)
            except e.ReferenceError_ as exc:
                self.rec.failure(spec, exc, batch=None, started="", latency=0.0, line=None)
                continue
            out_bytes = result_line_bytes(spec.model, spec.image_size, spec.aspect_ratio)
            if group.jobs and (group.jobs >= self.settings.batch_size
                               or group.bytes + len(line) > self.settings.max_file_bytes
                               or group.result_bytes + out_bytes > self.settings.max_result_bytes):
                committed += await self._seal(group, out)
                group = _Group(self.journal)
            group.add(spec, line, reserve, self.rec.prices.estimate(spec))
            group.result_bytes += out_bytes
        if group.jobs and not self.stop.is_set():
            await self._seal(group, out)
        else:
            group.discard()
        return out

    async def _seal(self, group: _Group, out: Submitted) -> float:
        rec = group.commit()
        states = self.rec.index.states
        for job_id in group.ids:
            states[job_id] = IN_BATCH
        out.jobs += rec.jobs
        out.batches += 1
        out.estimate_usd += group.estimate_usd
        crash_point("after_intent")
        await self._create(rec)
        return rec.reserve_usd

    async def _create(self, rec: BatchRecord) -> None:
        """Upload (if not yet) and create, recording each step; a create whose outcome is
        unknown is looked up by display name before it is tried again."""
        if rec.input_file is None or await self.api.get_file(rec.input_file) is None:
            path = self.journal.requests_path(rec.display_name)
            if not path.exists():
                log.warning("%s: request file gone before the batch was created; its jobs "
                            "return to pending", rec.display_name)
                self._close(rec, "request file missing")
                return
            file = await self.api.upload(path, display_name=rec.display_name)
            self.journal.update(rec.display_name, phase=Phase.UPLOADED, input_file=file["name"])
            crash_point("after_upload")
        assert rec.input_file is not None
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                op = await self.api.create(rec.model, rec.display_name, rec.input_file)
            except (e.TransientError, e.DailyQuotaError) as exc:
                # It may have been created all the same: look before creating again.
                log.warning("%s: create answered %s; looking it up", rec.display_name, exc)
                found = (await self.api.find({rec.display_name})).get(rec.display_name)
                if found is not None:
                    self._record_created(rec, found)
                    return
                if attempt == CREATE_ATTEMPTS:
                    raise
                await asyncio.sleep(min(2.0 ** attempt * 0.25, 30.0))
                continue
            except (e.PermanentError, e.FatalError):
                # Refused outright: nothing was created. Its jobs return to pending.
                self._close(rec, "create refused")
                raise
            crash_point("after_create")
            self._record_created(rec, op)
            return

    def _record_created(self, rec: BatchRecord, op: dict[str, Any]) -> None:
        info = batch_info(op)
        self.journal.update(
            rec.display_name, phase=Phase.CREATED, name=op.get("name") or info.get("name"),
            created_at=info.get("createTime") or "", state=info.get("state") or "",
        )
        self.journal.requests_path(rec.display_name).unlink(missing_ok=True)
        crash_point("after_record")

    def _close(self, rec: BatchRecord, note: str) -> None:
        self.journal.update(rec.display_name, phase=Phase.CLOSED, note=note)
        for job in self.journal.iter_jobs(rec.display_name):
            if self.rec.index.states.get(str(job["k"])) == IN_BATCH:
                self.rec.index.states.pop(str(job["k"]), None)

    # -- request lines ----------------------------------------------------------------------

    async def _request_line(self, spec: JobSpec) -> bytes:
        chain = spec.chain
        history = chain.history if chain is not None else ()
        plain = replace(spec, references=(), chain=replace(chain, history=()) if chain else None)
        body = await self.client.build_request(plain)
        parts = body["contents"][-1]["parts"]
        try:
            for ref in spec.references:
                parts.append({"fileData": await self._reference(ref)})
            # A conversation (issue 22) rides in the line's contents, each earlier image as an
            # uploaded file (a parent's image is uploaded once for all its children).
            body["contents"][:0] = [await self._turn(t) for t in history]
        except e.ReferenceError_ as exc:
            # Name the job's manifest line, as live mode's ledger does.
            raise e.ReferenceError_(source_prefix(spec) + exc.message) from exc
        return orjson.dumps({"key": spec.job_id, "request": body}) + b"\n"

    async def _turn(self, turn: Turn) -> dict[str, Any]:
        async def uploaded(image: Reference) -> dict[str, Any]:
            return {"fileData": await self._reference(image)}

        return await turn_body(turn, uploaded)

    async def _reference(self, ref: Reference) -> dict[str, str]:
        """The uploaded copy of a reference (uploading it the first time it is needed)."""
        key = ref.sha256 or ref.source
        known = self.journal.refs.get(key)
        if known is not None and seconds_since(str(known.get("at", ""))) < REF_REUSE_S:
            return {"mimeType": str(known["mime"]), "fileUri": str(known["uri"])}
        data, mime = await self._reference_bytes(ref)
        tmp = self.journal.dir / f"ref-{os.getpid()}.tmp"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        try:
            file = await self.api.upload(tmp, display_name=f"batchgen-ref-{key[:16]}",
                                         mime_type=mime)
        finally:
            tmp.unlink(missing_ok=True)
        uri = str(file.get("uri") or f"{self.api.settings.base_url}/v1beta/{file['name']}")
        self.journal.append({"ev": "ref", "ref": key, "file": file["name"], "uri": uri,
                             "mime": mime})
        return {"mimeType": mime, "fileUri": uri}

    async def _reference_bytes(self, ref: Reference) -> tuple[bytes | bytearray, str]:
        if ref.url is None:
            try:
                return load_reference_bytes(ref, max_bytes=None)
            except OSError as exc:
                raise e.ReferenceError_(f"{ref.source}: {exc.strerror}") from exc
        # The live client's reader: --reference-timeout, the 100 MiB cap after decompression,
        # a whole decode. A URL that failed once fails every row naming it without a fetch.
        failed = self._bad_urls.get(ref.url)
        if failed is not None:
            raise e.ReferenceError_(failed)
        try:
            return await self.client.fetch_reference(ref.url)
        except e.ReferenceError_ as exc:
            self._bad_urls[ref.url] = exc.message
            raise


class _Group:
    """One batch being filled: its request file and job list, written as jobs come in."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.seq = journal.next_seq()
        journal.dir.mkdir(parents=True, exist_ok=True)
        self.req_tmp = journal.dir / f"{self.seq:05d}.requests.tmp"
        self.jobs_tmp = journal.dir / f"{self.seq:05d}.jobs.tmp"
        self._req = self.req_tmp.open("wb")
        self._jobs = self.jobs_tmp.open("wb")
        self.ids: list[str] = []
        self.model = ""
        self.bytes = 0
        self.result_bytes = 0  # the expected results file
        self.reserve_usd = 0.0
        self.estimate_usd = 0.0
        self.wave = 0  # chains: 1 + the deepest of its jobs' depths; 0 for no chained job

    @property
    def jobs(self) -> int:
        return len(self.ids)

    def add(self, spec: JobSpec, line: bytes, reserve: float, estimate: float) -> None:
        self._req.write(line)
        self._jobs.write(jobs_line(spec))
        self.ids.append(spec.job_id)
        if spec.chain is not None:
            self.wave = max(self.wave, spec.chain.depth + 1)
        self.model = self.model or spec.model
        self.bytes += len(line)
        self.reserve_usd += reserve
        self.estimate_usd += estimate

    def commit(self) -> BatchRecord:
        """Files durable under the display name, then the intent: from here on the batch may
        exist, and its jobs belong to it."""
        j = self.journal
        name = j.display_name(self.seq, digest_ids(self.ids))
        commit_tmp(self._req, self.req_tmp, j.requests_path(name))
        commit_tmp(self._jobs, self.jobs_tmp, j.jobs_path(name))
        j.update(name, phase=Phase.INTENT, seq=self.seq, model=self.model, jobs=self.jobs,
                 reserve_usd=round(self.reserve_usd, 6), request_bytes=self.bytes,
                 expected_result_bytes=self.result_bytes,
                 intent_at=_now(), **({"wave": self.wave} if self.wave else {}))
        return j.records[name]

    def discard(self) -> None:
        for fh in (self._req, self._jobs):
            fh.close()
        for p in (self.req_tmp, self.jobs_tmp):
            Path(p).unlink(missing_ok=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
