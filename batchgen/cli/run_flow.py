"""``batchgen run`` after planning: the checks and messages around the live run.

The budget against the folder's spend first, then the estimate line, "nothing to do" and what
the filters matched, the confirmation, the run, the gallery and the summary with the next
command. Kept out of :mod:`batchgen.cli` so the command line stays a thin layer.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import BatchgenError
from ..exits import STOP_EXIT, ExitCode
from ..live.pool import RunResult, StopReason
from ..live.runner import execute
from ..planning.plan import PlanCounts, describe_missing
from ..planning.prepare import Prepared
from ..planning.tally import Tally
from ..redact import redact
from ..reporting.gallery import build_gallery, gallery_hint, too_big_to_refresh
from ..settings import RunOptions, Selection, tier_note
from ..words import plural
from .common import fail
from .messages import CommandLine, check_budget, suggest_budget

# After the estimate of a --fake run: the figure is what the service would charge.
FAKE_NOTE = "; the built-in fake (--fake) charges nothing"


def go(prep: Prepared, options: RunOptions, cmd: CommandLine) -> int:
    """From the plan to the summary: the checks and messages around the live run."""
    c = prep.counts
    tally = prep.tally
    budget_usd, selection, ui = options.settings.budget_usd, options.selection, options.ui
    # The budget first: a folder that already spent it must not print an estimate and a run.
    spent = prep.spent_before_usd + prep.unsettled.usd  # what --budget counts
    budget = check_budget(budget_usd, spent, c.estimate_usd, c.pending, cmd)
    if budget.reached:
        click.echo(budget.reached, err=True)
        return ExitCode.BUDGET
    # -q: only what is wrong and the summary; what the run is about to do goes unsaid.
    info = _silent if ui.quiet else _say
    for warning in prep.summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if prep.change:
        info(prep.change)
    if prep.restored:
        info(restored_line(prep))
    missing = describe_missing(c, selection.redo_missing)
    if missing:
        info(missing)
    if c.in_batch:
        info(f"{c.in_batch} jobs sit in running batches: skipped (batch mode collects them)")
    if c.left_out:
        info(f"{plural(c.left_out, 'chained job')} left out: a parent is neither made nor "
             "in this run (--only, --limit); they run with it")
    if c.superseded:
        info(f"{plural(c.superseded, 'chained job')} superseded: made from a parent image "
             "that changed; made again")
    if selection.redo_rejected:
        info(f"redo: {plural(len(prep.redos), 'job')} whose image was rejected; the "
             f"rejected images go to {prep.folder.path / 'rejected'}")
    elif selection.preview is not None:
        info(f"preview: {c.pending} of the pending jobs, spread over the manifest")
    fake = options.target.fake
    info(f"{c.pending} to run ({c.done} already done) -> {prep.folder.path}  "
         f"estimated ${c.estimate_usd:.2f}" + (f" at the service's prices{FAKE_NOTE}" if fake
                                               else ""))
    note = tier_note(options.settings.tiers, options.timeouts.request_s)
    if note:
        info(note)
    if c.pending == 0:
        return _nothing_to_do(c, tally, selection, cmd)
    if budget.warning:
        click.echo(f"warning: {budget.warning}", err=True)
    # The built-in fake bills nobody: asking whether to spend money it will not spend misleads.
    ask = (c.estimate_usd > ui.confirm_above_usd and not ui.yes and not fake
           and sys.stdin.isatty())
    if ask and not click.confirm(f"This run is estimated at ${c.estimate_usd:.2f}. Go ahead?"):
        # Declining is a choice, not a failure: exit 0, as nothing went wrong.
        click.echo("not started: nothing was sent", err=True)
        return ExitCode.OK
    result = asyncio.run(execute(prep, options))
    # A run that recorded nothing (a bad key, say) leaves the page as it was.
    changed = result.succeeded + result.failed > 0
    gallery = None if not ui.gallery or not changed else refresh_gallery(prep.folder.path)
    end = Ending(
        cmd=cmd,
        spent_before_usd=prep.spent_before_usd,
        per_image_usd=c.estimate_usd / c.pending,
        budget_usd=budget_usd,
        wanted=tally.wanted if tally is not None else c.pending,
        limited=selection.limit is not None,
    )
    code = summarize(result, prep.folder.path, gallery, end, quiet=ui.quiet)
    if prep.preview_rest is not None and result.stop_reason is StopReason.COMPLETED:
        info(preview_rest_line(prep, cmd, fake=options.target.fake))
    return code


def _say(text: str) -> None:
    click.echo(text, err=True)


def _silent(text: str) -> None:
    del text


def restored_line(prep: Prepared) -> str:
    """Images ``prune`` had moved aside whose rows are current again (an edit undone)."""
    return (f"restored {plural(prep.restored, 'image')} from {prep.folder.path / 'superseded'}: "
            "their rows are current again (nothing is paid again)")


def preview_rest_line(prep: Prepared, cmd: CommandLine, *, fake: bool = False) -> str:
    """After ``--preview``: what the jobs it left out would cost, and the command for them, at
    batch prices where the provider has the Batch API."""
    from ..spec import Provider

    rest = prep.preview_rest
    assert rest is not None
    if rest.jobs == 0:
        return "the preview ran every pending job"
    head = f"the other {plural(rest.jobs, 'job')}: "
    plain = cmd.render(drop=("preview",))
    if prep.client.provider is Provider.GOOGLE:
        # The built-in fake's batches end with the command: it must wait for them.
        batch = cmd.render(drop=("preview",), set={"mode": "batch", **({"wait": True} if fake
                                                                       else {})})
        return (f"{head}~${rest.batch_usd:.2f} with --mode batch, ~${rest.live_usd:.2f} live; "
                f"to run them: {batch}  (or live: {plain})")
    return (f"{head}~${rest.live_usd:.2f} live (at batch prices ~${rest.batch_usd:.2f} with "
            f"--provider google --mode batch); to run them: {plain}")


def _nothing_to_do(c: PlanCounts, tally: Tally | None, selection: Selection,
                   cmd: CommandLine) -> int:
    if selection.redo_rejected:
        click.echo("nothing to redo: no job's image is rejected (batchgen mark DIR --reject ID "
                   "rejects one)", err=True)
        return ExitCode.OK
    if selection.only is not None:
        pending = tally.open if tally is not None else 0
        fail(f"--only {selection.only!r} matched no pending job "
             f"({plural(pending, 'job')} pending without it)", ExitCode.INPUT)
    if c.failed_skipped:
        click.echo(
            f"nothing to do: {c.done} done, {plural(c.failed_skipped, 'permanent failure')} "
            "skipped; to retry them: " + cmd.render(set={"retry_failed": "all"}, drop=("limit",)),
            err=True,
        )
        return ExitCode.FAILED
    click.echo("nothing to do: every job is done", err=True)
    return ExitCode.OK if c.missing == 0 else ExitCode.FAILED


def refresh_gallery(out: Path) -> Path | None:
    """Rebuild DIR/gallery.html at the end of ``run``, unless the folder is too big for that.

    Above ``REFRESH_MAX_RECORDS`` ledger records the page takes a while to build, so ``run``
    prints how to build it (``batchgen gallery DIR``, any size) instead of making everyone wait.
    """
    if too_big_to_refresh(out):
        click.echo(gallery_hint(out), err=True)
        return None
    try:
        # The store made the thumbnails as the images landed; none is made here (issue 25).
        return build_gallery(out, thumbnails=False).path
    except BatchgenError as exc:
        click.echo(f"warning: no gallery: {exc}", err=True)
        return None


def summarize(
    result: RunResult, out: Path, gallery: Path | None = None, end: Ending | None = None, *,
    quiet: bool = False,
) -> int:
    lines = summary_lines(result, out, gallery, end)
    if quiet:
        # The summary line, and for a run that stopped early the command that goes on.
        done = result.stop_reason is StopReason.COMPLETED
        lines = lines[:1] + ([] if done or len(lines) < 2 else lines[-1:])
    for line in lines:
        click.echo(line, err=True)
    if result.stop_reason is StopReason.COMPLETED:
        return ExitCode.FAILED if result.failed else ExitCode.OK
    return STOP_EXIT[result.stop_reason.value]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ending:
    """What the end of ``run`` needs beyond the pool's result, to say how to go on."""

    cmd: CommandLine
    spent_before_usd: float = 0.0
    per_image_usd: float = 0.0  # the plan's estimate per job, for the budget to suggest
    budget_usd: float | None = None
    wanted: int = 0  # what this run would have sent without --limit
    limited: bool = False


# Not failures of a job but of the whole run (nothing is recorded for them): the stop line
# names them, and "0 failed (auth 1)" said less than nothing.
_RUN_STOPPERS = frozenset({"auth", "model_not_found", "daily_quota"})


def summary_lines(
    result: RunResult, out: Path, gallery: Path | None, end: Ending | None = None
) -> list[str]:
    """What ``run`` says at its end: counts, spend, where to look, and how to go on."""

    end = end or Ending(cmd=CommandLine("run", tuple(sys.argv[2:3]), (), {}))
    cmd = end.cmd
    errors = ", ".join(
        f"{k} {v}" for k, v in sorted(result.errors.items()) if k not in _RUN_STOPPERS
    )
    this_run = result.spent_usd - end.spent_before_usd
    reason = result.stop_reason
    lines: list[str] = []
    # A run that stopped early says so first, and why: "done:" after a Ctrl-C or a budget stop
    # read as if every job had been run.
    head = "done" if reason is StopReason.COMPLETED else f"stopped: {stop_why(result)}"
    if result.succeeded or result.failed or reason is not StopReason.FATAL:
        counts = (f"{result.succeeded} succeeded, {result.failed} failed"
                  + (f" ({errors})" if errors else "")
                  + f"; spent this run ${this_run:.2f}, folder ${result.spent_usd:.2f}; "
                  f"{result.elapsed_s:.1f}s; images in {out / 'images'}")
        lines.append(f"done: {counts}" if reason is StopReason.COMPLETED else f"{head}; {counts}")
    else:
        lines.append(head)
    reserved = result.unsettled_requests - result.lost_requests
    if reserved:
        lines.append(
            f"plus ${result.unsettled_usd - result.lost_usd:.2f} reserved for {reserved} "
            "request(s) whose outcome an earlier run never wrote down (counted toward --budget "
            "until their jobs run again)"
        )
    if result.lost_requests:
        lines.append(
            f"plus ${result.lost_usd:.2f} lost for {result.lost_requests} request(s) a killed run "
            "sent and never heard back from: their jobs ran again, so they count as spent")
    if gallery is not None:
        lines.append(f"gallery: {gallery}")
    # Jobs this run would have sent without --limit that are still not settled.
    left = max(end.wanted - result.succeeded - result.failed_permanent, 0)
    if reason is StopReason.COMPLETED:
        transient = result.failed - result.failed_permanent
        if end.limited and left:
            why = " (--limit stopped there)" if left > transient else ""
            lines.append(
                f"{plural(left, 'job')} still pending{why}; "
                f"to run them: {cmd.render(drop=('limit',))}"
            )
        if result.failed_permanent:
            lines.append(
                "to retry the permanent failures: "
                + cmd.render(set={"retry_failed": "all"}, drop=("limit",))
            )
        if transient and not (end.limited and left):
            lines.append(f"to retry the jobs that ran out of attempts: {cmd.render()}")
    elif reason is StopReason.INTERRUPTED:
        lines.append(f"to resume: {cmd.render()}")
    elif reason is StopReason.BUDGET:
        budget = end.budget_usd
        new = suggest_budget(result.spent_usd, left * end.per_image_usd, budget)
        lines.append(
            f"budget reached: the folder has spent ${result.spent_usd + result.unsettled_usd:.2f}"
            f" of the {result.stop_message} budget; {plural(left, 'job')} left, estimated at "
            f"${left * end.per_image_usd:.2f}; to continue, raise --budget: "
            + cmd.render(set={"budget": new})
        )
    else:
        lines.append(f"fix the cause, then resume with: {cmd.render()}")
    return lines


def stop_why(result: RunResult) -> str:
    """Why a run stopped before its end, in a few words (the message's first line)."""
    reason, message = result.stop_reason, result.stop_message
    if reason is StopReason.BUDGET:
        return f"the {message} budget is reached"
    if reason is StopReason.INTERRUPTED:
        return message or "interrupted"
    return redact(message)
