"""The CLI's side of batch mode: ``run --mode batch``, ``cancel``, and what ``status`` and
``estimate --mode batch`` add. Kept here so that the commands only dispatch."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..batch.driver import BudgetStop, cancel_batches, check_provider, run_batch
from ..errors import InputError
from ..exits import ExitCode
from ..folder.batches import BatchRecord, Journal
from ..folder.layout import JOURNAL_NAME
from ..folder.runfolder import RunFolder
from ..pricing import PriceTable
from ..providers import PROVIDERS, resolve_key
from ..redact import register_secret
from ..reporting.estimate import Estimate
from ..settings import ClientSettings, RunOptions
from ..spec import DEFAULT_MODEL, Provider
from ..words import plural
from .messages import CommandLine, suggest_budget

# What the batch driver says that -q keeps: the outcome and errors (and "... to collect:").
QUIET_SHOWN = ("done:", "stopped", "interrupted", "batchgen:", "budget")


def run_command(options: RunOptions, cmd: CommandLine) -> int:
    """``batchgen run --mode batch``: the exit code."""
    from ..planning.prepare import adopt_orphans, open_manifest, prepare
    from ..providers import resolve_provider
    from .run_flow import FAKE_NOTE, refresh_gallery, restored_line

    req, ui = options.target, options.ui
    # Before anything is locked or made: a provider without the Batch API is bad usage.
    header = open_manifest(req.manifest, req.model, req.provider).header
    check_provider(resolve_provider(req.provider or header.provider, req.manifest))
    if req.fake and not options.batch.wait:
        raise InputError("--fake with --mode batch needs --wait: the built-in fake server and "
                         "its batches end with this command (or start `batchgen fake-server` "
                         "and use --base-url)")
    prep = prepare(options)

    def info(text: str) -> None:
        if not ui.quiet:
            click.echo(text, err=True)

    def say(text: str) -> None:  # the driver's lines; with -q only the outcome's
        if not ui.quiet or text.startswith(QUIET_SHOWN) or "to collect:" in text:
            click.echo(text, err=True)

    try:
        adopt_orphans(prep)
        for warning in prep.summary.warnings:
            click.echo(f"warning: {warning}", err=True)
        c = prep.counts
        if prep.change and prep.change.startswith("manifest changed"):
            info(prep.change.split(":")[0])
        if prep.restored:
            info(restored_line(prep))
        model = header.model or req.model or DEFAULT_MODEL
        discount = PriceTable.load(req.prices).price(model).batch_discount
        batch_usd = c.estimate_usd * discount
        running = f", {c.in_batch} in running batches" if c.in_batch else ""
        cost = (f"  estimated ${batch_usd:.2f} at batch prices (${c.estimate_usd:.2f} live)"
                if c.pending else "")
        info(f"{c.pending} to submit ({c.done} already done{running}) -> "
             f"{prep.folder.path}{cost}" + (FAKE_NOTE if req.fake and cost else ""))
        if c.pending == 0 and not Journal(prep.folder.path).open_records():
            click.echo("nothing to do: every job is done", err=True)
            return ExitCode.OK if c.failed_skipped == 0 else 1
        # The built-in fake bills nobody: no question about money it will not spend.
        if (batch_usd > ui.confirm_above_usd and not ui.yes and not req.fake
                and sys.stdin.isatty()):
            click.confirm(f"This run is estimated at ${batch_usd:.2f}. Go ahead?", abort=True)
        outcome = run_batch(prep, options, say)
    finally:
        os.close(prep.lock_fd)
    if outcome.budget is not None:
        click.echo(budget_stop_line(outcome.budget, cmd), err=True)
    if outcome.finished and ui.gallery:
        gallery = refresh_gallery(prep.folder.path)
        if gallery is not None:
            info(f"gallery: {gallery}")
    if outcome.code == ExitCode.RUNNING and options.batch.running_ok:
        return ExitCode.OK  # --running-ok: "still running" is not a failure to `set -e`
    return outcome.code


def refresh_command(run_dir: Path, provider: str | None, base_url: str | None) -> None:
    """``status --refresh``: one poll of the service for the folder's open batches."""
    from ..batch.watch import refresh_states

    if not (run_dir / JOURNAL_NAME).exists():
        return
    settings = _client_settings(run_dir, provider, base_url)
    asyncio.run(refresh_states(settings, run_dir))


def budget_stop_line(stop: BudgetStop, cmd: CommandLine) -> str:
    """Exit 3's last line, with a --budget that lets the next run submit every pending job:
    what is spent plus each job's reserve (its worst case and the duplicate margin), so the
    suggested command does not stop at the budget again before submitting."""
    new = suggest_budget(stop.needed_usd, 0.0, stop.budget_usd)
    margin = f" plus a duplicate margin of {stop.margin:.0%}" if stop.margin >= 0.005 else ""
    return (
        f"budget reached: spent ${stop.spent_usd:.2f} of the ${stop.budget_usd:.2f} budget; "
        f"{plural(stop.pending, 'job')} not submitted, estimated ${stop.estimate_usd:.2f} at "
        f"batch prices; a batch holds back its jobs' worst case{margin} until it is "
        f"collected, so to submit them all, raise --budget: {cmd.render(set={'budget': new})}"
    )


def _client_settings(run_dir: Path, provider: str | None, base_url: str | None) -> ClientSettings:
    meta = RunFolder(run_dir).read_meta()
    chosen = Provider(provider or meta.get("provider") or Provider.GOOGLE.value)
    url = base_url or str(meta.get("base_url") or PROVIDERS[chosen].base_url)
    if "REDACTED" in url or "***" in url:
        raise InputError(f"{run_dir}: its base URL was stored redacted; give --base-url")
    key = resolve_key(chosen)
    register_secret(key)
    return ClientSettings(provider=chosen, base_url=url, api_key=key)


def cancel_command(run_dir: Path, yes: bool, provider: str | None, base_url: str | None) -> int:
    if not (run_dir / JOURNAL_NAME).exists():
        click.echo(f"{run_dir}: no batches", err=True)
        return ExitCode.OK
    folder = RunFolder(run_dir)
    lock = folder.lock()  # no run may submit or collect meanwhile
    try:
        settings = _client_settings(run_dir, provider, base_url)
        journal = Journal(run_dir)

        def confirm(targets: list[BatchRecord]) -> bool:
            jobs = sum(r.jobs for r in targets)
            click.echo(f"{len(targets)} running batches hold {jobs} jobs:", err=True)
            for r in targets:
                click.echo(f"  {r.name}  {r.display_name}  {r.state}  {r.jobs} jobs", err=True)
            if yes:
                return True
            if not sys.stdin.isatty():
                raise InputError("cancel asks before it cancels; give --yes to run it unattended")
            return click.confirm("Cancel them?", default=False)

        result = asyncio.run(cancel_batches(settings, journal, confirm))
    finally:
        os.close(lock)
    if result.batches and not Journal(run_dir).open_records():
        folder.update_meta(state="batches cancelled")  # the status headline follows the rows
    if result.batches:
        click.echo(f"cancelled {result.batches} batches; {result.jobs} jobs are pending again",
                   err=True)
    for line in result.finished:
        click.echo(line, err=True)
    if not result.batches and not result.finished:
        click.echo("no running batches to cancel", err=True)
    return ExitCode.OK


def estimate_side_by_side(est: Estimate, prices_path: Path | None) -> tuple[str, dict[str, Any]]:
    """Standard, flex and batch cost of an estimate's rows, next to each other (a model the
    table lists without flex shows "-" there, and the flex total is then None)."""
    prices = PriceTable.load(prices_path)

    def money(usd: float | None) -> str:
        return "-" if usd is None else "$" + format(usd, ".2f")

    lines = ["", "", f"  {'cost':<26} {'model':<22} {'size':>4} {'qty':>7} {'standard':>10} "
             f"{'flex':>10} {'batch':>10}"]
    batch_total, flex_total = 0.0, 0.0
    flex_ok = True
    for r in est.rows:
        price = prices.price(r.model)
        batch = r.subtotal_usd * price.batch_discount
        batch_total += batch
        factor = dict(price.tiers).get("flex")
        flex = None if factor is None else r.subtotal_usd * factor
        flex_total += flex or 0.0
        flex_ok = flex_ok and flex is not None
        lines.append(f"  {r.item:<26} {r.model:<22} {r.image_size or '':>4} {r.quantity:>7} "
                     f"{money(r.subtotal_usd):>10} {money(flex):>10} {money(batch):>10}")
    shown_flex = flex_total if flex_ok else None
    lines.append(f"  {'total (estimated)':<26} {'':<22} {'':>4} {est.jobs:>7} "
                 f"{money(est.cost_usd):>10} {money(shown_flex):>10} {money(batch_total):>10}")
    lines.append("  standard: live, now; flex: live, answers in 1-15 min, may be shed (run --tier "
                 "flex); batch: results within 24 h (usually much sooner)")
    return "\n".join(lines), {
        "mode": "batch", "live_cost_usd": round(est.cost_usd, 4),
        "flex_cost_usd": None if shown_flex is None else round(shown_flex, 4),
        "batch_cost_usd": round(batch_total, 4),
    }
