"""A job's outcome, recorded: the image and its sidecar made durable, then the ledger line.

The ledger line settles the job's intents (:mod:`batchgen.intents`); the run's counts of
succeeded and failed jobs follow what reached the ledger. A full disk stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import errors as e
from ..api.client import GeneratedImage
from ..api.retrying import is_retryable
from ..folder import records
from ..folder.intents import IntentJournal
from ..folder.ledger import LedgerWriter
from ..progress import Progress
from ..spec import JobSpec
from ..store.images import ImageStore
from .outcome import JobState, RunResult, StopReason, StopRun


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorder:
    """Writes each finished job down; ``result`` counts what reached the ledger."""

    store: ImageStore
    ledger: LedgerWriter
    intents: IntentJournal | None
    progress: Progress
    result: RunResult
    stop: StopRun

    def note_error(self, exc: e.APIError) -> None:
        kind = exc.kind.value
        self.result.errors[kind] = self.result.errors.get(kind, 0) + 1

    async def success(
        self, spec: JobSpec, state: JobState, image: GeneratedImage, started: str, latency: float
    ) -> None:
        record = records.success_record(
            spec,
            _fields(spec, state, started, latency),
            output=self.store.relpath(spec.job_id, image.mime_type),
            data=image.data,
            mime_type=image.mime_type,
            width=image.width,
            height=image.height,
            text=image.text,
            grounding=image.grounding,
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
        record = records.failure_record(
            _fields(spec, state, started, latency), exc, retryable=retry, message=exc.message
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
    )
