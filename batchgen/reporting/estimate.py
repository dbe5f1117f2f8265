"""``batchgen estimate``: what a run would send, cost and take, before anything is spent.

The plan is the same one ``run`` makes (ledger index + :class:`~batchgen.planning.plan.Plan`
+ :class:`~batchgen.settings.Selection`), so against a run folder that already has a ledger only
what is still to do is counted. Prices come from :class:`~batchgen.pricing.PriceTable` alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..folder.ownership import owner_problem
from ..folder.runfolder import RunFolder
from ..folder.verdicts import rejected_jobs
from ..planning.plan import REJECTED, LedgerIndex, Plan, mark_in_batch, read_index
from ..pricing import TYPICAL_TEXT_TOKENS, PriceTable
from ..settings import Selection
from ..spec import JobSpec
from ..words import plural

log = logging.getLogger(__name__)

DEFAULT_LATENCY_S = 30.0
DEFAULT_CONCURRENCY = 8

IMAGE_OUTPUT = "image output"
TEXT_OUTPUT = "text and thinking output"
PROMPT_INPUT = "prompt text input"
REFERENCE_INPUT = "reference images input"
_ITEM_ORDER = (IMAGE_OUTPUT, TEXT_OUTPUT, REFERENCE_INPUT, PROMPT_INPUT)


@dataclass(frozen=True, slots=True, kw_only=True)
class EstimateRequest:
    """What ``batchgen estimate`` was asked for: the plan's inputs and the assumed pace::

        EstimateRequest(manifest=Path("cats.yaml"), rpm=60, selection=Selection(limit=100))
    """

    manifest: Path
    out: Path | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    rpm: float | None = None
    latency_s: float = DEFAULT_LATENCY_S
    prices: Path | None = None
    model: str | None = None
    provider: str | None = None
    selection: Selection = field(default_factory=Selection)
    columns: tuple[tuple[str, str], ...] = ()  # --column FIELD=HEADER
    defaults: tuple[tuple[str, str], ...] = ()  # --set FIELD=VALUE


@dataclass(frozen=True, slots=True)
class CostRow:
    """One line of the breakdown: ``quantity`` of ``unit`` at ``unit_usd`` each."""

    item: str
    model: str
    image_size: str | None
    quantity: int
    unit: str
    unit_usd: float
    subtotal_usd: float

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "model": self.model,
            "image_size": self.image_size,
            "quantity": self.quantity,
            "unit": self.unit,
            "unit_usd": round(self.unit_usd, 6),
            "subtotal_usd": round(self.subtotal_usd, 6),
        }


@dataclass(frozen=True, slots=True)
class Estimate:
    manifest: Path
    run_dir: Path
    jobs: int  # to send now; one image each
    total: int  # in scope for this run folder (after --shard / --only)
    done: int
    failed_skipped: int
    by_size: dict[str, int]
    by_model: dict[str, int]
    references: int
    rows: tuple[CostRow, ...]
    cost_usd: float
    eta_s: float
    concurrency: int
    rpm: float | None
    latency_s: float
    warnings: tuple[str, ...] = ()
    retry_kinds: tuple[str, ...] | None = None  # what --retry-failed named (() for all)

    @property
    def images(self) -> int:
        # candidateCount > 1 is rejected on image models: one job is one request is one image.
        return self.jobs

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest),
            "run_dir": str(self.run_dir),
            "jobs": self.jobs,
            "images": self.images,
            "total": self.total,
            "done": self.done,
            "failed_skipped": self.failed_skipped,
            "by_size": dict(sorted(self.by_size.items())),
            "by_model": dict(sorted(self.by_model.items())),
            "references": self.references,
            "cost_usd": round(self.cost_usd, 4),
            "rows": [r.to_json() for r in self.rows],
            "eta_s": round(self.eta_s, 1),
            "concurrency": self.concurrency,
            "rpm": self.rpm,
            "latency_s": self.latency_s,
            "assumed_text_tokens_per_image": TYPICAL_TEXT_TOKENS,
        }


def eta_seconds(jobs: int, concurrency: int, latency_s: float, rpm: float | None) -> float:
    """Wall time: whichever is slower, the workers at ``latency_s`` each or the rpm cap."""
    by_workers = math.ceil(jobs / concurrency) * latency_s if jobs else 0.0
    by_rate = jobs / rpm * 60.0 if rpm else 0.0
    return max(by_workers, by_rate)


class _Breakdown:
    """Accumulates the pending jobs' costs into rows while the plan is counted."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        # (item, model, size) -> [quantity, subtotal]
        self.cells: dict[tuple[str, str, str | None], list[float]] = {}
        self.by_model: dict[str, int] = {}
        self.references = 0

    def _add(self, key: tuple[str, str, str | None], quantity: int, usd: float) -> None:
        cell = self.cells.setdefault(key, [0, 0.0])
        cell[0] += quantity
        cell[1] += usd

    def __call__(self, job: JobSpec) -> float:
        parts = self.prices.parts(job)
        self.by_model[job.model] = self.by_model.get(job.model, 0) + 1
        self.references += len(job.references)
        self._add((IMAGE_OUTPUT, job.model, job.image_size), 1, parts.image_usd)
        self._add((TEXT_OUTPUT, job.model, None), 1, parts.text_usd)
        self._add((PROMPT_INPUT, job.model, None), 1, parts.prompt_usd)
        if job.references:
            self._add((REFERENCE_INPUT, job.model, None), len(job.references), parts.references_usd)
        return parts.total_usd

    def rows(self) -> tuple[CostRow, ...]:
        out: list[CostRow] = []
        for (item, model, size), (qty, usd) in self.cells.items():
            n = int(qty)
            if item == IMAGE_OUTPUT:
                unit, unit_usd = "image", self.prices.image_unit(model, size or "")
            elif item == TEXT_OUTPUT:
                unit, unit_usd = "image", self.prices.text_unit(model)
            elif item == REFERENCE_INPUT:
                unit, unit_usd = "reference image", self.prices.reference_unit(model)
            else:
                # Prompt tokens differ per job; the mean is the honest unit.
                unit, unit_usd = "job", usd / n if n else 0.0
            out.append(CostRow(item, model, size, n, unit, unit_usd, usd))
        out.sort(key=lambda r: (_ITEM_ORDER.index(r.item), r.model, r.image_size or ""))
        return tuple(out)


def estimate(req: EstimateRequest) -> Estimate:
    """Validate the manifest (raises InputError), then plan against the run folder's ledger."""
    from ..planning.prepare import default_out, open_manifest
    from ..planning.recall import folder_choices

    run_dir = req.out or default_out(req.manifest)
    # As run does: the folder's --model and provider when not given (planning/recall.py).
    model, provider = folder_choices(run_dir)
    manifest = open_manifest(
        req.manifest, req.model or model, req.provider or provider, prices=req.prices,
        columns=req.columns, defaults=req.defaults,
    )  # fmt: skip
    try:
        prices = PriceTable.load(req.prices)
    except InputError:
        manifest.validate()  # the manifest's problems come first, as they always have
        raise
    # The ledger first, so the plan is counted in the same pass that validates the manifest.
    owner = owner_problem(RunFolder(run_dir).read_meta(), req.manifest, run_dir)
    index = read_index(RunFolder(run_dir).ledger_path) if owner is None else LedgerIndex()
    selection = req.selection
    if owner is None:
        if selection.redo_rejected:  # what run --redo-rejected would send: the rejected jobs
            redos = rejected_jobs(run_dir)
            index.states.update(dict.fromkeys(redos, REJECTED))
            selection = dataclasses.replace(selection, ids=frozenset(redos))
        mark_in_batch(run_dir, index)
    breakdown = _Breakdown(prices)
    plan = Plan(manifest.iter_jobs, index, selection, breakdown)
    summary = manifest.validate(visit=plan.count_job)
    if owner is not None:
        raise InputError(owner)  # after the manifest's own problems, as run reports them
    price_warnings = prices.check_covered()  # a size with no price: exit 2 naming the file
    counts = plan.counts
    rows = breakdown.rows()
    return Estimate(
        manifest=req.manifest,
        run_dir=run_dir,
        jobs=counts.pending,
        total=counts.total,
        done=counts.done,
        failed_skipped=counts.failed_skipped,
        by_size=dict(counts.by_size),
        by_model=breakdown.by_model,
        references=breakdown.references,
        rows=rows,
        cost_usd=counts.estimate_usd,
        eta_s=eta_seconds(counts.pending, req.concurrency, req.latency_s, req.rpm),
        concurrency=req.concurrency,
        rpm=req.rpm,
        latency_s=req.latency_s,
        warnings=(*summary.warnings, *price_warnings),
        retry_kinds=req.selection.retry_failed,
    )


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _usd(value: float) -> str:
    # Prompt text costs fractions of a cent a job; four decimals would print it as zero.
    return f"${value:.4f}" if value >= 0.001 or value == 0 else f"${value:.6f}"


def format_estimate(e: Estimate, *, batch_table: str | None = None) -> str:
    """The estimate as text. ``batch_table`` (``estimate --mode batch``) takes the place of the
    live cost table, and the time line says what a batch's time depends on instead."""
    lines = [f"{e.manifest} -> {e.run_dir}"]
    already = f"{e.done} already done"
    if e.failed_skipped:
        hint = "--retry-failed to include"
        if e.retry_kinds:
            hint = "other kinds than --retry-failed names"
        already += f", {e.failed_skipped} failed and skipped ({hint})"
    lines.append(
        f"  {plural(e.jobs, 'job')}, {plural(e.images, 'image')} to run of {e.total} ({already})"
    )
    if not e.jobs:
        lines.append("  nothing to run")
    else:
        sizes = ", ".join(f"{n} x {size}" for size, n in sorted(e.by_size.items()))
        models = ", ".join(f"{n} x {m}" for m, n in sorted(e.by_model.items()))
        lines.append(f"  by size:  {sizes}")
        lines.append(f"  by model: {models}")
        lines.append("")
    if e.jobs and batch_table is not None:
        lines.append(batch_table.strip("\n"))
    elif e.jobs:
        head = f"  {'cost':<26} {'model':<22} {'size':>4} {'qty':>7} {'unit':>10} {'subtotal':>10}"
        lines.append(head)
        for r in e.rows:
            lines.append(
                f"  {r.item:<26} {r.model:<22} {r.image_size or '':>4} {r.quantity:>7} "
                f"{_usd(r.unit_usd):>10} {'$' + format(r.subtotal_usd, '.2f'):>10}"
            )
        lines.append(f"  {'total (estimated)':<26} {'':<22} {'':>4} {e.jobs:>7} {'':>10} "
                     f"{'$' + format(e.cost_usd, '.2f'):>10}")
    if e.jobs:
        lines.append(
            f"  text output assumed at {TYPICAL_TEXT_TOKENS} tokens an image; "
            "billing follows the answers' usageMetadata"
        )
    lines.append("")
    if batch_table is not None:
        # --concurrency, --rpm and --latency pace live requests; a batch is paced by the service.
        lines.append("  time: a batch's results come within 24 h, usually much sooner; "
                     "--concurrency and --rpm do not apply")
        return "\n".join(lines)
    pace = f"concurrency {e.concurrency}, {e.latency_s:g}s an image"
    if e.rpm:
        pace += f", at most {e.rpm:g} requests a minute"
    lines.append(f"  time: ~{format_duration(e.eta_s)} ({pace})")
    return "\n".join(lines)
