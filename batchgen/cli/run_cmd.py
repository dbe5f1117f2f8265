"""The commands that read a manifest: ``run``, ``validate`` and ``estimate``.

Each parses, calls the library and prints; what ``run`` says around the live run is in
:mod:`.run_flow`, batch mode in :mod:`.batch_cmd`. The pipeline is imported when a command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import guarded, setup_logging
from .options import (
    estimate_parameters,
    estimate_request,
    manifest_argument,
    model_option,
    prices_option,
    provider_option,
    run_options,
    run_parameters,
    spreadsheet_options,
)

if TYPE_CHECKING:
    from ..spec import JobSpec


@click.command()
@run_parameters
@guarded
def run(manifest: Path, **o: Any) -> None:
    """Generate every job in MANIFEST that the run folder does not have yet."""
    from ..planning.prepare import adopt_orphans, prepare
    from .messages import CommandLine

    cmd = CommandLine.from_context(click.get_current_context())
    options = run_options(manifest, o)
    setup_logging(options.ui.verbose)
    from ..planning.recall import default_out, recall

    options = recall(options, weak=_from_environment(click.get_current_context()))
    if "fake" in options.target.remembered:
        out = options.target.out or default_out(manifest)
        click.echo(f"{out} was made with --fake: running "
                   "against the built-in fake server again (no key, no cost)", err=True)
    if options.mode == "batch":
        from .batch_cmd import run_command

        sys.exit(run_command(options, cmd))
    prep = prepare(options)
    adopt_orphans(prep)
    from .run_flow import go

    sys.exit(go(prep, options, cmd))


def _from_environment(ctx: click.Context) -> tuple[str, ...]:
    """The options set by an environment variable (BATCHGEN_PROVIDER), not typed: a shell's
    default, which a folder's own provider overrides rather than contradicts."""
    from click.core import ParameterSource

    return tuple(name for name in ("provider",)
                 if ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT)


@click.command()
@manifest_argument
@model_option("Model id for every job.")
@provider_option("Overrides the manifest's provider [anyfast].")
@prices_option
@spreadsheet_options
@click.option("--check-urls", is_flag=True,
              help="Also ask each URL reference (HEAD) whether it is there; a missing or "
                   "unreachable one is a problem, exit 2.")
@guarded
def validate(manifest: Path, model: str | None, provider: str | None, prices: Path | None,
             columns: tuple[tuple[str, str], ...], defaults: tuple[tuple[str, str], ...],
             check_urls: bool) -> None:
    """Check MANIFEST without sending anything, and print the plan."""
    from ..planning.prepare import open_manifest
    from ..words import plural

    setup_logging(0)
    m = open_manifest(manifest, model, provider, prices=prices, columns=columns,
                      defaults=defaults)
    where: dict[str, JobSpec] = {}  # each URL reference -> the first job that names it

    def note_urls(spec: JobSpec) -> None:
        for ref in spec.references:
            if ref.url is not None:
                where.setdefault(ref.url, spec)

    summary = m.validate(visit=note_urls if check_urls else None)
    if check_urls:
        _check_urls(where)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    sizes = ", ".join(f"{n} x {size}" for size, n in sorted(summary.by_size.items()))
    models = ", ".join(f"{n} x {name}" for name, n in sorted(summary.by_model.items()))
    click.echo(f"{manifest}: ok: {plural(summary.jobs, 'job')}, {plural(summary.jobs, 'image')} "
               f"({sizes})")
    click.echo(f"models: {models}; reference images sent: {summary.references}")
    if summary.chains is not None:
        click.echo(summary.chains.line())


def _check_urls(where: dict[str, JobSpec]) -> None:
    """Each URL asked once; the ones that would fail are problems at their first job's line."""
    import asyncio

    from ..api.url_check import check_urls
    from ..errors import InputError, Problem
    from ..words import plural

    failed = asyncio.run(check_urls(where))
    if failed:
        raise InputError([Problem(where[url].source_file, where[url].source_line, "images",
                                  f"{url}: {failed[url]}") for url in where if url in failed])
    if where:
        click.echo(f"{plural(len(where), 'URL reference')} checked: each answered", err=True)


@click.command()
@estimate_parameters
@guarded
def estimate(manifest: Path, as_json: bool, mode: str, **o: Any) -> None:
    """What running MANIFEST would cost and take, before anything is spent."""
    from ..reporting.estimate import estimate as make_estimate
    from ..reporting.estimate import format_estimate

    setup_logging(0)
    req = estimate_request(manifest, o)
    est = make_estimate(req)
    for warning in est.warnings:
        click.echo(f"warning: {warning}", err=True)
    from .batch_cmd import estimate_side_by_side

    side, extra = estimate_side_by_side(est, req.prices)
    if mode != "batch" and est.jobs:
        # The other two ways to run it, in one line: --mode batch shows them row by row.
        flex = extra["flex_cost_usd"]
        side = (f"\n  the same as flex ${flex:.2f} (run --tier flex) or batch "
                f"${extra['batch_cost_usd']:.2f} (--mode batch); estimate --mode batch shows "
                "them row by row" if flex is not None else
                f"\n  the same as batch ${extra['batch_cost_usd']:.2f} (--mode batch); not every "
                "model here offers flex")
        extra = {k: extra[k] for k in ("flex_cost_usd", "batch_cost_usd")}
    elif mode != "batch":
        side, extra = "", {}
    if as_json:
        import orjson

        click.echo(orjson.dumps({**est.to_json(), **extra}).decode())
    elif mode == "batch":
        # One table: the batch column next to standard and flex, and no live time.
        click.echo(format_estimate(est, batch_table=side))
    else:
        click.echo(format_estimate(est) + side)
