"""Batch-mode outcomes into the store and the ledger, as live mode writes them.

:class:`Recorder` writes one outcome: a success (image and sidecar durable, then the ledger
line), a further billed copy of a kept result, or a failure (charged when it was billed).
:class:`Tally` counts what one invocation collected. :func:`crash_point` is the test hook that
kills the process at a named point.
"""

from __future__ import annotations

import io
import os
import signal
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image, UnidentifiedImageError

from .. import errors as e
from ..api.retrying import is_retryable
from ..folder.appender import LedgerWriter
from ..folder.layout import now_iso
from ..folder.ledger import LedgerRecord
from ..folder.records import failure_record, job_fields, success_record
from ..folder.verdicts import Redos
from ..manifest.references import sniff_image_type
from ..planning.plan import RETRYABLE, SUCCEEDED, LedgerIndex
from ..pricing import PriceTable
from ..spec import JobSpec
from ..store.images import ImageStore

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
                       text: str | None, grounding: Any = None, sha256: str | None = None,
                       **kw: Any) -> LedgerRecord:
        return success_record(
            spec, self._fields(spec, **kw), output=self.store.relpath(spec.job_id, mime),
            data=data, mime_type=mime, width=size[0], height=size[1], text=text,
            grounding=grounding, sha256=sha256,
        )

    async def save_success(self, record: LedgerRecord, data: bytes,
                           turn: tuple[dict[str, Any], ...] = ()) -> None:
        """Image and sidecar durable, then the ledger line: the order live mode keeps. The
        sidecar also keeps the answer's parts a later edit sends back (``turn``)."""
        line = record.to_line()
        sidecar = replace(record, turn=turn).to_line() if turn else line
        assert record.mime_type is not None
        await self.store.save(record.job_id, data, record.mime_type, sidecar=sidecar)
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
