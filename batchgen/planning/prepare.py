"""``batchgen run`` from top to bottom: manifest -> plan -> pool -> client -> store -> ledger.

Everything that can be checked is checked before the first request: the manifest, the key, the
run folder. Only then is anything sent.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..catalog import ModelTable, builtin_table
from ..errors import BatchgenError, InputError, StorageError
from ..folder.appender import LedgerWriter
from ..folder.current import CurrentWriter
from ..folder.intents import Unsettled
from ..folder.layout import LOCK_FILE
from ..folder.ledger import LedgerRecord
from ..folder.ownership import owner_problem
from ..folder.runfolder import RunFolder
from ..folder.superseded import restore_superseded
from ..folder.verdicts import Redo, rejected_jobs
from ..manifest import Manifest, ValidationSummary
from ..pricing import PriceTable
from ..providers import PROVIDERS, check_base_url, resolve_key, resolve_provider
from ..redact import register_secret
from ..settings import ClientSettings, RunOptions, Selection
from ..spec import JobSpec, Provider
from ..store.recovery import adopt_redone
from .lineage import Lineage
from .plan import (
    MISSING,
    REJECTED,
    SUCCEEDED,
    LedgerIndex,
    Plan,
    PlanCounts,
    find_orphans,
    manifest_sha256,
    mark_in_batch,
    read_index,
)
from .preview import Rest, pick
from .recall import check_same
from .recall import default_out as default_out
from .session import FAKE_KEY
from .tally import Tally as _Tally
from .tally import describe_resume
from .tally import previous_ids as _previous_ids

log = logging.getLogger(__name__)

@dataclass(slots=True)
class Prepared:
    manifest: Manifest
    summary: ValidationSummary
    folder: RunFolder
    plan: Plan
    counts: PlanCounts
    client: ClientSettings
    prices: PriceTable
    spent_before_usd: float
    unsettled: Unsettled
    change: str | None
    orphans: list[LedgerRecord]
    lock_fd: int
    tally: _Tally | None = None
    # --redo-rejected: job id -> the rejected image to keep aside and the note; --preview: what
    # the jobs it left out would take.
    redos: dict[str, Redo] = dataclasses.field(default_factory=dict)
    preview_rest: Rest | None = None
    restored: int = 0  # images prune had moved aside, back in images/ (their rows are current)


def open_manifest(
    path: Path,
    model: str | None,
    provider: str | None,
    *,
    prices: Path | None = None,
    columns: tuple[tuple[str, str], ...] = (),
    defaults: tuple[tuple[str, str], ...] = (),
) -> Manifest:
    """Open with the request limit of the provider that will be used, and the model table with
    ``prices``' models in it (a broken prices file is reported after the manifest's problems,
    as ever: until then the built-in table checks the models)."""
    try:
        models = ModelTable.load(prices)
    except InputError:
        models = builtin_table()
    first = Manifest(path, model=model, models=models, columns=columns, defaults=defaults)
    chosen = resolve_provider(provider or first.header.provider, path)
    if PROVIDERS[chosen].max_request_bytes == 20 * 1024 * 1024:
        return first
    return Manifest(
        path, model=model, max_request_bytes=PROVIDERS[chosen].max_request_bytes,
        models=models, columns=columns, defaults=defaults,
    )  # fmt: skip


def prepare(options: RunOptions) -> Prepared:
    """Everything before the first request, with one pass over the manifest.

    The plan is counted while the manifest is validated, so the ledger index is read first, under
    the run folder's lock. Bad input still creates nothing: a run folder that does not exist yet
    is neither made nor locked until the manifest, key and prices have passed. Errors are reported
    in the same order as ever (manifest, key, prices, run folder): one found early waits its turn.
    """
    target, selection = options.target, options.selection
    manifest = open_manifest(
        target.manifest, target.model, target.provider, prices=target.prices,
        columns=target.columns, defaults=target.defaults,
    )  # fmt: skip
    prices: PriceTable | None = None
    prices_error: InputError | None = None
    try:
        prices = PriceTable.load(target.prices, tier=(options.settings.tiers or ("standard",))[0])
    except InputError as exc:
        prices_error = exc
    out = target.out or default_out(target.manifest)
    folder = RunFolder(out)
    lock: int | None = None
    lock_error: BatchgenError | None = None
    index = LedgerIndex()
    orphans: list[LedgerRecord] = []
    # Lock first only a folder that an earlier run has used: bad input must create nothing,
    # not even a lock file in a folder that merely exists.
    if (folder.path / LOCK_FILE).exists():
        try:
            lock = folder.lock()
        except (InputError, StorageError) as exc:
            lock_error = exc
    old_meta = folder.read_meta()
    owner = owner_problem(old_meta, target.manifest, folder.path)
    if owner is not None and lock_error is None:
        lock_error = InputError(owner)
    new_sha = manifest_sha256(target.manifest)
    # The current-jobs file is written in the same pass (straight into the folder if it is ours).
    current = CurrentWriter(folder.path if lock is not None and lock_error is None else None)
    covers = selection.covers
    redos: dict[str, Redo] = {}
    rest: Rest | None = None
    if selection.redo_rejected:  # nothing, until the folder's reviews say which
        selection = dataclasses.replace(selection, ids=frozenset())
    try:
        if lock is not None and lock_error is None:
            index = read_index(folder.ledger_path)
            orphans = find_orphans(folder, index)
            if selection.redo_rejected:  # first: a redo already in a running batch waits
                selection, redos = _redo_rejected(folder, index, orphans, selection)
            mark_in_batch(folder.path, index)
        price = prices.estimate if prices is not None else None
        plan = Plan(manifest.iter_jobs, index, selection, price)
        if lock is not None and lock_error is None:
            plan.lineage = Lineage(folder.path, plan.chained)
        tally = _Tally(plan, current, _previous_ids(folder.path, old_meta, new_sha))
        summary = manifest.validate(visit=None if lock_error else tally.visit)
        provider = resolve_provider(target.provider or manifest.header.provider, target.manifest)
        info = PROVIDERS[provider]
        tiers = options.settings.tiers
        if tiers and provider is not Provider.GOOGLE and not target.fake:
            raise InputError(
                f"--tier {','.join(tiers)}: service tiers are offered by the google provider "
                f"only, not {provider.value} (add --provider google, or drop --tier)"
            )
        base_url = target.base_url or manifest.header.base_url or info.base_url
        where = "--base-url" if target.base_url else f"{target.manifest}: base_url"
        base_url = check_base_url(base_url, where)
        check_same(old_meta, target, provider.value, base_url, folder.path,
                   manifest.header.base_url)
        api_key = FAKE_KEY if target.fake else resolve_key(provider)
        # From here on the key is scrubbed from everything, run.json included.
        register_secret(api_key)
        if prices_error is not None:
            raise prices_error
        assert prices is not None
        # Every size and model the plan priced must have a price (exit 2 naming the file).
        prices.check_tiers(options.settings.tiers)
        price_warnings = prices.check_covered()
        if price_warnings:
            summary = dataclasses.replace(summary, warnings=(*summary.warnings, *price_warnings))
        if lock_error is not None:
            raise lock_error
        if lock is None:
            lock = folder.lock()  # makes the folder
            if _made_meanwhile(folder):
                # Another run made the folder while this one validated: plan against its ledger.
                index = read_index(folder.ledger_path)
                orphans = find_orphans(folder, index)
                mark_in_batch(folder.path, index)
                plan.index = index
                plan.count(price)
                tally.untouched = 0
        if plan.lineage is None:
            plan.lineage = Lineage(folder.path, plan.chained)
        # The jobs the manifest holds now, with their metadata, for exports and reports: written
        # even when nothing is left to run, since an edited label re-runs nothing.
        current.commit(
            folder.path, lambda: (j for j in manifest.iter_jobs() if covers(j))
        )
        if old_meta and old_meta.get("manifest_sha256") != new_sha:
            # The hash goes with jobs.jsonl, just rewritten: "manifest changed since the last
            # run" compares against the manifest the last planning read, which a run with
            # nothing to do (or one declined or stopped at the budget) read too.
            folder.update_meta(manifest_sha256=new_sha)
        restored = restore_superseded(folder.path)
        if restored:
            # Images `prune` had moved aside whose jobs are current again (an edit undone): the
            # plan saw them missing; now they are back, and count as done.
            for job_id in restored:
                if index.states.get(job_id) == MISSING:
                    index.states[job_id] = SUCCEEDED
            plan.count(price)
        if selection.preview is not None and prices is not None:
            rest = _choose_preview(manifest, plan, prices)
        counts = plan.counts
        change = describe_resume(old_meta, new_sha, counts, tally.untouched, tally.previous)
    except BaseException:
        current.discard()
        if lock is not None:
            os.close(lock)
        raise
    client = ClientSettings(
        provider=provider,
        base_url=base_url,
        api_key=api_key,
        timeout_s=options.timeouts.request_s,
        reference_timeout_s=options.timeouts.reference_s,
        connections=options.settings.concurrency,
        max_request_bytes=info.max_request_bytes,
    )
    return Prepared(
        manifest=manifest,
        summary=summary,
        folder=folder,
        plan=plan,
        counts=counts,
        client=client,
        prices=prices,
        spent_before_usd=index.cost_usd,
        unsettled=index.unsettled,
        change=change,
        orphans=orphans,
        lock_fd=lock,
        tally=tally,
        redos=redos,
        preview_rest=rest,
        restored=len(restored),
    )


def _made_meanwhile(folder: RunFolder) -> bool:
    """Whether the folder, just locked by :meth:`RunFolder.lock`, holds more than the lock file
    (another run's ledger, or any files at all): then the plan is read again against it."""
    with os.scandir(folder.path) as entries:
        return any(entry.name != LOCK_FILE for entry in entries)


def adopt_orphans(prep: Prepared) -> None:
    """Record the images an earlier run saved but never got into the ledger."""
    if not prep.orphans:
        return
    ledger = LedgerWriter(prep.folder.ledger_path)
    try:
        for rec in prep.orphans:
            ledger.append(rec)
            log.warning("adopted %s: saved before the last run stopped, not paid again", rec.job_id)
    finally:
        ledger.close()
    prep.orphans = []


def _redo_rejected(folder: RunFolder, index: LedgerIndex, orphans: list[LedgerRecord],
                   selection: Selection) -> tuple[Selection, dict[str, Redo]]:
    """``--redo-rejected``: the jobs whose image now is rejected become the only ones to send.

    A redo whose new image reached the disk but not the ledger (a ``kill -9``) is adopted
    instead, as any orphan is: it was paid for."""
    redos = rejected_jobs(folder.path)
    for rec in adopt_redone(folder.path, {k: r.sha256 for k, r in redos.items()}):
        orphans.append(rec)
        del redos[rec.job_id]
        index.cost_usd += rec.cost_usd
        index.unsettled.settle(rec.job_id, rec.started_at)
    for job_id in redos:
        index.states[job_id] = REJECTED
    return dataclasses.replace(selection, ids=frozenset(redos)), redos


def _choose_preview(manifest: Manifest, plan: Plan, prices: PriceTable) -> Rest:
    """``--preview N``: the plan narrowed to N pending jobs that spread over the manifest, and
    what the others would take. One more pass over the manifest, which chooses and prices; the
    plan's counts are narrowed from what it kept (a recount would be a pass more: +1.2 s at
    100,000 jobs)."""
    from array import array

    assert plan.selection.preview is not None
    states, wants = plan.index.states, plan.wants
    ids: list[str] = []
    sizes: list[str] = []
    live, batch = array("d"), array("d")

    def jobs() -> Iterator[tuple[JobSpec, bool]]:
        for job in manifest.iter_jobs():
            if wants(job):
                usd = prices.estimate(job)
                ids.append(job.job_id)
                sizes.append(job.image_size)
                live.append(usd)
                batch.append(usd * prices.price(job.model).batch_discount)
                yield job, True
            elif states.get(job.job_id) == SUCCEEDED:
                yield job, False

    chosen = pick(jobs(), plan.selection.preview)
    rest = Rest(len(ids) - len(chosen), sum(live) - sum(live[i] for i in chosen),
                sum(batch) - sum(batch[i] for i in chosen))
    plan.selection = dataclasses.replace(plan.selection, ids=frozenset(ids[i] for i in chosen))
    c = plan.counts
    c.pending = len(chosen)
    c.estimate_usd = sum(live[i] for i in chosen)
    c.by_size = {}
    for i in chosen:
        c.by_size[sizes[i]] = c.by_size.get(sizes[i], 0) + 1
    return rest
