"""``batchgen run`` after planning: the checks and messages around :func:`run.execute`.

The budget against the folder's spend first, then the estimate line, "nothing to do" and what
the filters matched, the confirmation, the run, the gallery and the summary with the next
command. Kept out of :mod:`batchgen.cli` so the command line stays a thin layer.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from .cli import EXIT_BUDGET, EXIT_FAILED, EXIT_INPUT, EXIT_OK, STOP_EXIT, fail
from .errors import BatchgenError
from .gallery import build_gallery, gallery_hint, too_big_to_refresh
from .messages import CommandLine, check_budget
from .plan import PlanCounts, describe_missing
from .pool import RunResult, StopReason
from .run import Ending, Prepared, RunRequest, execute, summary_lines
from .superseded import Tally
from .words import plural


def go(prep: Prepared, req: RunRequest, o: dict[str, Any], cmd: CommandLine) -> int:
    """From the plan to the summary: the checks and messages around :func:`run.execute`."""
    c = prep.counts
    tally = prep.tally
    # The budget first: a folder that already spent it must not print an estimate and a run.
    spent = prep.spent_before_usd + prep.unsettled.usd  # what --budget counts
    budget = check_budget(o["budget"], spent, c.estimate_usd, c.pending, cmd)
    if budget.reached:
        click.echo(budget.reached, err=True)
        return EXIT_BUDGET
    for warning in prep.summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if prep.change:
        click.echo(prep.change, err=True)
    missing = describe_missing(c, o["redo_missing"])
    if missing:
        click.echo(missing, err=True)
    if c.in_batch:
        click.echo(f"{c.in_batch} jobs sit in running batches: skipped (batch mode collects "
                   "them)", err=True)
    click.echo(
        f"{c.pending} to run ({c.done} already done) -> {prep.folder.path}  "
        f"estimated ${c.estimate_usd:.2f}",
        err=True,
    )
    if c.pending == 0:
        return _nothing_to_do(c, tally, o, cmd)
    if budget.warning:
        click.echo(f"warning: {budget.warning}", err=True)
    ask = c.estimate_usd > req.confirm_above_usd and not req.yes and sys.stdin.isatty()
    if ask and not click.confirm(f"This run is estimated at ${c.estimate_usd:.2f}. Go ahead?"):
        # Declining is a choice, not a failure: exit 0, as nothing went wrong.
        click.echo("not started: nothing was sent", err=True)
        return EXIT_OK
    result = asyncio.run(execute(prep, req))
    # A run that recorded nothing (a bad key, say) leaves the page as it was.
    changed = result.succeeded + result.failed > 0
    gallery = None if o["no_gallery"] or not changed else _refresh_gallery(prep.folder.path)
    end = Ending(
        cmd=cmd,
        spent_before_usd=prep.spent_before_usd,
        per_image_usd=c.estimate_usd / c.pending,
        budget_usd=o["budget"],
        wanted=tally.wanted if tally is not None else c.pending,
        limited=o["limit"] is not None,
    )
    return summarize(result, prep.folder.path, gallery, end)


def _nothing_to_do(c: PlanCounts, tally: Tally | None, o: dict[str, Any], cmd: CommandLine) -> int:
    if o["only"] is not None:
        pending = tally.open if tally is not None else 0
        fail(f"--only {o['only']!r} matched no pending job "
             f"({plural(pending, 'job')} pending without it)", EXIT_INPUT)
    if c.failed_skipped:
        click.echo(
            f"nothing to do: {c.done} done, {plural(c.failed_skipped, 'permanent failure')} "
            "skipped; to retry them: " + cmd.render(set={"retry_failed": "all"}, drop=("limit",)),
            err=True,
        )
        return EXIT_FAILED
    click.echo("nothing to do: every job is done", err=True)
    return EXIT_OK if c.missing == 0 else EXIT_FAILED


def _refresh_gallery(out: Path) -> Path | None:
    """Rebuild DIR/gallery.html at the end of ``run``, unless the folder is too big for that.

    Above ``REFRESH_MAX_RECORDS`` ledger records the page takes a while to build, so ``run``
    prints how to build it (``batchgen gallery DIR``, any size) instead of making everyone wait.
    """
    if too_big_to_refresh(out):
        click.echo(gallery_hint(out), err=True)
        return None
    try:
        return build_gallery(out).path
    except BatchgenError as exc:
        click.echo(f"warning: no gallery: {exc}", err=True)
        return None


def summarize(result: RunResult, out: Path, gallery: Path | None = None, end: Any = None) -> int:
    for line in summary_lines(result, out, gallery, end):
        click.echo(line, err=True)
    if result.stop_reason is StopReason.COMPLETED:
        return EXIT_FAILED if result.failed else EXIT_OK
    return STOP_EXIT[result.stop_reason.value]
