"""A job's outcome, recorded: the image and its sidecar made durable, then the ledger line.

The ledger line settles the job's intents (:mod:`batchgen.intents`); the run's counts of
succeeded and failed jobs follow what reached the ledger. A full disk stops the run from
sending, and the answers already paid for wait in memory until they can be saved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from .. import errors as e
from ..api.client import GeneratedImage
from ..api.retrying import is_retryable
from ..folder import records
from ..folder.appender import LedgerWriter
from ..folder.intents import IntentJournal
from ..folder.verdicts import Redos
from ..progress import Progress
from ..spec import JobSpec
from ..store.digest import image_sha256
from ..store.images import ImageStore
from .outcome import JobState, RunResult, StopReason, StopRun

log = logging.getLogger(__name__)

# How often answers held through a full disk try to reach it again.
SPACE_POLL_S = 2.0


def is_disk_full(exc: e.StorageError) -> bool:
    return "the disk is full" in str(exc)  # the one wording: folder/durable.why, store/images


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorder:
    """Writes each finished job down; ``result`` counts what reached the ledger."""

    store: ImageStore
    ledger: LedgerWriter
    intents: IntentJournal | None
    progress: Progress
    result: RunResult
    stop: StopRun
    redos: Redos | None = None

    def note_error(self, exc: e.APIError) -> None:
        kind = exc.kind.value
        self.result.errors[kind] = self.result.errors.get(kind, 0) + 1

    async def success(
        self, spec: JobSpec, state: JobState, image: GeneratedImage, started: str, latency: float
    ) -> None:
        fields = self._fields(spec, state, started, latency)
        if fields is None:
            return
        record = records.success_record(
            spec,
            fields,
            output=self.store.relpath(spec.job_id, image.mime_type),
            data=image.data,
            mime_type=image.mime_type,
            width=image.width,
            height=image.height,
            text=image.text,
            grounding=image.grounding,
            sha256=await image_sha256(image.data),
        )
        line = record.to_line()
        # The sidecar also keeps the answer's parts a later edit sends back (issue 22): the
        # ledger stays lean, the sidecar is what a child reads.
        sidecar = dataclasses.replace(record, turn=image.turn).to_line() if image.turn else line
        data, mime_type = image.data, image.mime_type
        del image
        saved = held = False
        while True:
            try:
                if not saved:
                    await self.store.save(spec.job_id, data, mime_type, sidecar=sidecar)
                    saved = True
                self.ledger.append_line(line)
                break
            except e.StorageError as exc:
                if not is_disk_full(exc):
                    self.stop(StopReason.STORAGE, str(exc))
                    return
                # A paid answer is kept until it is on disk: held here (the answers in flight
                # are bounded by the concurrency) and saved once space is back. Nothing new
                # is sent meanwhile.
                if not held:
                    held = True
                    log.warning(
                        "%s: the answer for %s is held in memory and saved as soon as space is "
                        "freed (tried every %.0f s); free some space; stopping now (Ctrl-C twice) "
                        "would lose it", exc, spec.job_id, SPACE_POLL_S)
                self.stop(StopReason.STORAGE, str(exc))
                await asyncio.sleep(SPACE_POLL_S)
        del data
        self._settle(spec, state)
        self.result.succeeded += 1
        self.progress.job_done(ok=True)

    async def failure(
        self,
        spec: JobSpec,
        state: JobState,
        exc: e.APIError,
        started: str,
        latency: float,
        *,
        retryable: bool | None = None,
    ) -> None:
        """``retryable`` given: a stopped job's spend, kept while the job stays pending."""
        retry = is_retryable(exc) if retryable is None else retryable
        fields = self._fields(spec, state, started, latency)
        if fields is None:
            return
        record = records.failure_record(fields, exc, retryable=retry, message=exc.message)
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
            self.progress.job_done(ok=False, kind=exc.kind.value)

    def _fields(self, spec: JobSpec, state: JobState, started: str, latency: float
                ) -> dict[str, Any] | None:
        """The line's fields; a redo's say what they replace, once its rejected image is set
        aside (None, and the run stopped, if it cannot be)."""
        fields = _fields(spec, state, started, latency)
        if self.redos:
            try:
                fields.update(self.redos.before_line(spec.job_id))
            except e.StorageError as exc:
                self.stop(StopReason.STORAGE, str(exc))
                return None
        return fields

    def _settle(self, spec: JobSpec, state: JobState) -> None:
        """The job's ledger line is written: it settles its intents, and is fsync'd soon."""
        if self.intents is not None:
            self.intents.settle(spec.job_id, state.started_at)
        self.ledger.sync_soon()


def _fields(spec: JobSpec, state: JobState, started: str, latency: float) -> dict[str, Any]:
    return records.job_fields(
        spec,
        attempts=state.attempts,
        usage=state.usage,
        cost_usd=state.cost_usd,
        latency_s=latency,
        started_at=started,
        tier=state.tier,
    )
