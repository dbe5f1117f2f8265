"""The click parameters of the commands, and the typed options built from ``run``'s and
``estimate``'s.

The only place the parameters are a dict: :func:`run_options` turns ``run``'s into a
:class:`~batchgen.settings.RunOptions`, :func:`estimate_request` ``estimate``'s into an
:class:`~batchgen.reporting.estimate.EstimateRequest`. The options several commands share are
written once. The option types are imported when a command runs, not when ``--help`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.decorators import FC

from .common import RETRY_HELP, RunDir, parse_retry_kinds, parse_shard

if TYPE_CHECKING:
    from ..reporting.estimate import EstimateRequest
    from ..settings import RunOptions, Selection

Decorator = Callable[[FC], FC]
# A command's function before click makes it a command: what the parameter stacks decorate.
CommandFunction = Callable[..., None]


def _stack(*decorators: Decorator[FC]) -> Decorator[FC]:
    """The decorators applied as if written one above the other, first on top (so its option
    comes first in ``--help``)."""

    def apply(fn: FC) -> FC:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


def model_option(help: str) -> Callable[[FC], FC]:
    return click.option("--model", help=help)


def provider_option(help: str) -> Callable[[FC], FC]:
    return click.option("--provider", type=click.Choice(["anyfast", "google"]),
                        envvar="BATCHGEN_PROVIDER", help=help)


def retry_failed_option(help: str) -> Callable[[FC], FC]:
    return click.option("--retry-failed", is_flag=False, flag_value="all", default=None,
                        metavar="[KINDS]", help=help)


def selection_options(*, limit: str, only: str, shard: str, redo_missing: str
                      ) -> Callable[[FC], FC]:
    """--limit, --only, --shard and --redo-missing (a Selection), in each command's words."""
    return _stack(
        click.option("--limit", type=click.IntRange(1), help=limit),
        click.option("--only", metavar="ID_GLOB", help=only),
        click.option("--shard", metavar="K/N", help=shard),
        click.option("--redo-missing", is_flag=True, help=redo_missing),
    )


manifest_argument = click.argument("manifest", type=click.Path(path_type=Path))
out_option = click.option("--out", type=click.Path(path_type=Path),
                          help="Run folder [jobs/<manifest stem>].")
concurrency_option = click.option("--concurrency", type=click.IntRange(1, 1024), default=8,
                                  show_default=True)
rpm_option = click.option("--rpm", type=click.FloatRange(min=1),
                          help="Requests per minute, at most.")
prices_option = click.option("--prices",
                             type=click.Path(path_type=Path, exists=True, dir_okay=False))
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
run_dir_argument = click.argument("run_dir", type=RunDir(path_type=Path, exists=True))
# For the commands that only read a folder: a manifest given instead is taken to its folder.
read_dir_argument = click.argument("run_dir", type=RunDir(path_type=Path, exists=True,
                                                          follow_manifest=True))

def _pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
           ) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r}: write FIELD=VALUE", ctx=ctx, param=param)
        out.append((name.strip(), rest))
    return tuple(out)


# `--column FIELD=HEADER` and `--set FIELD=VALUE`, each repeatable, as pairs.
spreadsheet_options: Decorator[CommandFunction] = _stack(
    click.option("--column", "columns", multiple=True, metavar="FIELD=HEADER", callback=_pairs,
                 help="Read a CSV column (or JSONL key) as a field, e.g. "
                      "--column prompt=Description."),
    click.option("--set", "defaults", multiple=True, metavar="FIELD=VALUE", callback=_pairs,
                 help="Give every row a default, e.g. --set image_size=2K (a row's own value "
                      "wins)."),
)


run_parameters: Decorator[CommandFunction] = _stack(
    manifest_argument,
    out_option,
    click.option("--fake", is_flag=True,
                 help="Use the built-in fake Gemini server (no key, no cost)."),
    provider_option("Overrides the manifest's provider (CSV and JSONL have none) [anyfast]."),
    click.option("--base-url", help="Point the provider at another host."),
    model_option("Model id for every job [gemini-3-pro-image]."),
    concurrency_option,
    click.option("--timeout", type=click.FloatRange(0.1), default=None,
                 help="Seconds per request [300; 1200 with --tier flex, whose answers take "
                      "1-15 minutes]."),
    click.option("--tier", metavar="TIER[,TIER]",
                 help="Service tier (google only): standard, flex (half price, answers in 1-15 "
                      "min, may be shed) or priority; flex,standard: a job moves to standard "
                      "after --fallback-after sheds in a row."),
    click.option("--fallback-after", type=click.IntRange(1, 100), default=3, show_default=True,
                 metavar="SHEDS", help="With --tier flex,standard: sheds before a job moves on."),
    click.option("--reference-timeout", type=click.FloatRange(0.1), default=60.0,
                 show_default=True, help="Seconds to fetch one URL reference image."),
    click.option("--max-attempts", type=click.IntRange(1, 100), default=6, show_default=True),
    click.option("--backoff", type=click.FloatRange(0.0), default=1.0, show_default=True,
                 help="First retry wait in seconds when the server names none (doubles, max 60)."),
    rpm_option,
    click.option("--ipm", type=click.FloatRange(min=1), help="Images per minute, at most."),
    click.option("--rate-window", type=click.FloatRange(min=0.1), default=60.0, hidden=True,
                 help="The window --rpm/--ipm count over, in seconds (for tests)."),
    click.option("--burst", type=click.IntRange(1, 1000), default=1, show_default=True,
                 help="Requests that may leave at once under --rpm/--ipm after an idle spell."),
    click.option("--retry-blocked", type=click.IntRange(0, 20), default=0, show_default=True,
                 help="Extra tries for safety blocks and no-image answers."),
    retry_failed_option(RETRY_HELP),
    click.option("--budget", type=click.FloatRange(0.0), help="Hard spending cap in USD."),
    click.option("--confirm-above", type=click.FloatRange(0.0), default=20.0, show_default=True,
                 help="Ask before a run estimated above this many USD (when stdin is a terminal)."),
    click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation."),
    selection_options(
        limit="Run only the first N pending jobs.",
        only="Run only jobs whose id matches.",
        shard="Run only this machine's share of the jobs.",
        redo_missing="Run again the succeeded jobs whose image file is gone (costs money).",
    ),
    click.option("--preview", type=click.IntRange(1), metavar="N",
                 help="Run N pending jobs live, chosen to show every row and var value, then "
                      "say what the rest would cost."),
    click.option("--redo-rejected", is_flag=True,
                 help="Run again the jobs whose image was rejected (batchgen mark); the "
                      "rejected images are kept in DIR/rejected/."),
    prices_option,
    spreadsheet_options,
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option("--no-gallery", is_flag=True, help="Do not refresh DIR/gallery.html at the end."),
    click.option("--log-every", type=click.FloatRange(0.0), default=60.0, show_default=True,
                 metavar="SECONDS",
                 help="When stderr is not a terminal, a progress line this often (0: none)."),
    click.option("-v", "--verbose", count=True, help="Log every attempt (debug)."),
    click.option("-q", "--quiet", is_flag=True,
                 help="No progress bar or lines: only errors, warnings and the summary line."),
    click.option(
        "--mode", type=click.Choice(["live", "batch"]), default="live", show_default=True,
        help="batch: the Gemini Batch API, half price, results within 24 h (google only).",
    ),
    click.option("--wait", is_flag=True, help="Batch mode: poll until every batch is collected."),
    click.option("--running-ok", is_flag=True,
                 help="Batch mode: exit 0, not 5, when batches are still running (set -e)."),
    click.option("--batch-size", type=click.IntRange(1), default=1000, show_default=True,
                 help="Batch mode: jobs per batch at most."),
    click.option("--poll-interval", type=click.FloatRange(0.01), default=30.0, show_default=True,
                 help="Batch mode with --wait: seconds between polls, at least."),
    click.option("--max-file-bytes", type=click.IntRange(1024), default=None, hidden=True,
                 help="Batch mode: request file size cap (for tests; the service's is 2 GB)."),
    click.option("--max-result-bytes", type=click.IntRange(1024), default=None, hidden=True,
                 help="Batch mode: expected results file cap (for tests; 1 GB)."),
)

estimate_parameters: Decorator[CommandFunction] = _stack(
    manifest_argument,
    out_option,
    concurrency_option,
    rpm_option,
    click.option("--latency", type=click.FloatRange(0.0), default=30.0, show_default=True,
                 help="Assumed seconds per image."),
    prices_option,
    spreadsheet_options,
    model_option("Model id for every job."),
    provider_option("Overrides the manifest's provider [anyfast]."),
    retry_failed_option("Count permanent failures too, as run does. " + RETRY_HELP),
    selection_options(
        limit="Only the first N pending jobs.",
        only="Only jobs whose id matches.",
        shard="Only this machine's share of the jobs.",
        redo_missing="Count the succeeded jobs whose image file is gone, as run --redo-missing.",
    ),
    click.option("--redo-rejected", is_flag=True,
                 help="Count only the jobs whose image was rejected, as run --redo-rejected."),
    json_option,
    click.option("--mode", type=click.Choice(["live", "batch"]), default="live",
                 show_default=True, help="batch: show standard, flex and batch cost side by side."),
)


def _selection(o: dict[str, Any], retry_failed: tuple[str, ...] | None,
               shard: tuple[int, int] | None) -> Selection:
    from ..settings import Selection

    return Selection(retry_failed=retry_failed, only=o["only"], shard=shard, limit=o["limit"],
                     redo_missing=o["redo_missing"], preview=o.get("preview"),
                     redo_rejected=bool(o.get("redo_rejected")))


def _check_loop_options(o: dict[str, Any]) -> None:
    """--preview and --redo-rejected each choose the jobs: not with each other or --limit."""
    from ..errors import InputError

    if o["preview"] is not None:
        for name, clash in (("--limit", o["limit"] is not None),
                            ("--redo-rejected", o["redo_rejected"]),
                            ("--mode batch", o["mode"] == "batch")):
            if clash:
                raise InputError(f"--preview runs a few jobs live, chosen by itself: drop {name}")


def run_options(manifest: Path, o: dict[str, Any]) -> RunOptions:
    """``run``'s parameters as click parsed them, typed (a bad --shard or --retry-failed is a
    usage error, in that order)."""
    from ..settings import (
        MAX_FILE_BYTES,
        MAX_RESULT_BYTES,
        BatchSettings,
        Interaction,
        RunOptions,
        RunSettings,
        Target,
        Timeouts,
        tier_timeout,
    )

    _check_loop_options(o)
    tiers = parse_tiers(o["tier"], o["mode"])
    timeout = o["timeout"] if o["timeout"] is not None else tier_timeout(tiers)
    shard = parse_shard(o["shard"])
    selection = _selection(o, parse_retry_kinds(o["retry_failed"]), shard)
    return RunOptions(
        target=Target(manifest=manifest, out=o["out"], fake=o["fake"], provider=o["provider"],
                      base_url=o["base_url"], model=o["model"], prices=o["prices"],
                      columns=o["columns"], defaults=o["defaults"]),
        mode=o["mode"],
        timeouts=Timeouts(request_s=timeout, reference_s=o["reference_timeout"]),
        settings=RunSettings(
            concurrency=o["concurrency"],
            max_attempts=o["max_attempts"],
            backoff_initial_s=o["backoff"],
            rpm=o["rpm"],
            ipm=o["ipm"],
            rate_window_s=o["rate_window"],
            burst=o["burst"],
            retry_blocked=o["retry_blocked"],
            budget_usd=o["budget"],
            grace_s=timeout,  # a request in flight may take its whole timeout to end
            tiers=tiers,
            fallback_after_sheds=o["fallback_after"],
        ),
        selection=selection,
        batch=BatchSettings(batch_size=o["batch_size"],
                            max_file_bytes=o["max_file_bytes"] or MAX_FILE_BYTES,
                            max_result_bytes=o["max_result_bytes"] or MAX_RESULT_BYTES,
                            wait=o["wait"], poll_interval_s=o["poll_interval"],
                            running_ok=o["running_ok"]),
        ui=Interaction(yes=o["yes"], confirm_above_usd=o["confirm_above"],
                       progress=not (o["no_progress"] or o["quiet"]),
                       log_every_s=0.0 if o["quiet"] else o["log_every"],
                       verbose=o["verbose"], gallery=not o["no_gallery"], quiet=o["quiet"]),
    )


def parse_tiers(value: str | None, mode: str) -> tuple[str, ...]:
    """--tier flex or flex,standard -> ("flex", "standard"); a usage error otherwise."""
    from ..errors import InputError
    from ..spec import SERVICE_TIERS

    if value is None:
        return ()
    tiers = tuple(t.strip().lower() for t in value.split(","))
    for t in tiers:
        if t not in SERVICE_TIERS:
            known = ", ".join(SERVICE_TIERS)
            raise InputError(f"--tier {value}: {t!r} is not a tier; one of {known}")
    if len(set(tiers)) != len(tiers):
        raise InputError(f"--tier {value}: a tier named twice")
    if mode == "batch":
        raise InputError(f"--tier {value}: service tiers are for live requests; batch mode has "
                         "its own price (drop --tier or --mode batch)")
    return tiers


def estimate_request(manifest: Path, o: dict[str, Any]) -> EstimateRequest:
    """``estimate``'s parameters (all but --json and --mode, which say how to show it), typed."""
    from ..reporting.estimate import EstimateRequest

    retry_failed = parse_retry_kinds(o["retry_failed"])
    return EstimateRequest(
        manifest=manifest, out=o["out"], concurrency=o["concurrency"], rpm=o["rpm"],
        latency_s=o["latency"], prices=o["prices"], model=o["model"], provider=o["provider"],
        selection=_selection(o, retry_failed, parse_shard(o["shard"])),
        columns=o["columns"], defaults=o["defaults"],
    )
