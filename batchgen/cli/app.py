"""The ``batchgen`` command line.

Exit codes: 0 every job succeeded; 1 the run finished and some jobs failed; 2 bad input or usage,
nothing sent; 3 the budget was reached; 4 a fatal error stopped the run (bad key, unknown model,
daily quota, disk full); 130 interrupted.

Only click and batchgen's light modules are imported up front: aiohttp, Pillow, tenacity, tqdm
and the pipeline are imported inside the commands that use them, so ``--help``, ``--version``
and ``status`` start fast (tests/cli/test_startup.py checks ``import batchgen.cli.app`` pulls
none in).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..exits import ExitCode
from .common import RETRY_HELP, RunDir, fail, guarded, parse_retry_kinds, parse_shard, setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchgen")
def main() -> None:
    """Generate images in bulk with Gemini 3 Pro Image: resumable, rate-limited, budgeted."""


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Run folder [jobs/<manifest stem>].")
@click.option("--fake", is_flag=True, help="Use the built-in fake Gemini server (no key, no cost).")
@click.option("--provider", type=click.Choice(["anyfast", "google"]), envvar="BATCHGEN_PROVIDER",
              help="Overrides the manifest's provider (CSV and JSONL have none) [anyfast].")
@click.option("--base-url", help="Point the provider at another host.")
@click.option("--model", help="Model id for every job [gemini-3-pro-image].")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--timeout", type=click.FloatRange(0.1), default=300.0, show_default=True,
              help="Seconds per request.")
@click.option("--reference-timeout", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="Seconds to fetch one URL reference image.")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=6, show_default=True)
@click.option("--backoff", type=click.FloatRange(0.0), default=1.0, show_default=True,
              help="First retry wait in seconds when the server names none (doubles, max 60).")
@click.option("--rpm", type=click.FloatRange(min=1), help="Requests per minute, at most.")
@click.option("--ipm", type=click.FloatRange(min=1), help="Images per minute, at most.")
@click.option("--rate-window", type=click.FloatRange(min=0.1), default=60.0, hidden=True,
              help="The window --rpm/--ipm count over, in seconds (for tests).")
@click.option("--burst", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Requests that may leave at once under --rpm/--ipm after an idle spell.")
@click.option("--retry-blocked", type=click.IntRange(0, 20), default=0, show_default=True,
              help="Extra tries for safety blocks and no-image answers.")
@click.option("--retry-failed", is_flag=False, flag_value="all", default=None, metavar="[KINDS]",
              help=RETRY_HELP)
@click.option("--budget", type=click.FloatRange(0.0), help="Hard spending cap in USD.")
@click.option("--confirm-above", type=click.FloatRange(0.0), default=20.0, show_default=True,
              help="Ask before a run estimated above this many USD (when stdin is a terminal).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--limit", type=click.IntRange(1), help="Run only the first N pending jobs.")
@click.option("--only", metavar="ID_GLOB", help="Run only jobs whose id matches.")
@click.option("--shard", metavar="K/N", help="Run only this machine's share of the jobs.")
@click.option("--redo-missing", is_flag=True,
              help="Run again the succeeded jobs whose image file is gone (costs money).")
@click.option("--prices", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--no-gallery", is_flag=True, help="Do not refresh DIR/gallery.html at the end.")
@click.option("--log-every", type=click.FloatRange(0.0), default=60.0, show_default=True,
              metavar="SECONDS",
              help="When stderr is not a terminal, a progress line this often (0: none).")
@click.option("-v", "--verbose", count=True, help="Log every attempt (debug).")
@click.option("--mode", type=click.Choice(["live", "batch"]), default="live", show_default=True,
              help="batch: the Gemini Batch API, half price, results within 24 h (google only).")
@click.option("--wait", is_flag=True, help="Batch mode: poll until every batch is collected.")
@click.option("--batch-size", type=click.IntRange(1), default=1000, show_default=True,
              help="Batch mode: jobs per batch at most.")
@click.option("--poll-interval", type=click.FloatRange(0.01), default=30.0, show_default=True,
              help="Batch mode with --wait: seconds between polls, at least.")
@click.option("--max-file-bytes", type=click.IntRange(1024), default=None, hidden=True,
              help="Batch mode: request file size cap (for tests; the service's is 2 GB).")
@guarded
def run(manifest: Path, **o: Any) -> None:
    """Generate every job in MANIFEST that the run folder does not have yet."""
    from ..planning.plan import Selection
    from ..planning.prepare import RunRequest, adopt_orphans, prepare
    from .messages import CommandLine

    cmd = CommandLine.from_context(click.get_current_context())
    setup_logging(o["verbose"])
    shard = parse_shard(o["shard"])
    retry_failed = parse_retry_kinds(o["retry_failed"])
    req = RunRequest(
        manifest=manifest,
        out=o["out"],
        fake=o["fake"],
        provider=o["provider"],
        base_url=o["base_url"],
        model=o["model"],
        timeout_s=o["timeout"],
        reference_timeout_s=o["reference_timeout"],
        prices=o["prices"],
        yes=o["yes"],
        confirm_above_usd=o["confirm_above"],
        log_every_s=o["log_every"],
        settings={
            "concurrency": o["concurrency"],
            "max_attempts": o["max_attempts"],
            "backoff_initial_s": o["backoff"],
            "rpm": o["rpm"],
            "ipm": o["ipm"],
            "rate_window_s": o["rate_window"],
            "burst": o["burst"],
            "retry_blocked": o["retry_blocked"],
            "budget_usd": o["budget"],
            "grace_s": o["timeout"],
            "shard": shard,
            "progress": not o["no_progress"],
        },
    )
    selection = Selection(retry_failed=retry_failed, only=o["only"], shard=shard, limit=o["limit"],
                          redo_missing=o["redo_missing"])
    if o["mode"] == "batch":
        from .batch_cmd import run_command

        sys.exit(run_command(req, selection, o))
    prep = prepare(req, selection=selection)
    adopt_orphans(prep)
    from .run_flow import go

    sys.exit(go(prep, req, o, cmd))


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--model", help="Model id for every job.")
@click.option("--provider", type=click.Choice(["anyfast", "google"]), envvar="BATCHGEN_PROVIDER",
              help="Overrides the manifest's provider [anyfast].")
@guarded
def validate(manifest: Path, model: str | None, provider: str | None) -> None:
    """Check MANIFEST without sending anything, and print the plan."""
    from ..planning.prepare import open_manifest
    from ..words import plural

    setup_logging(0)
    m = open_manifest(manifest, model, provider)
    summary = m.validate()
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    sizes = ", ".join(f"{n} x {size}" for size, n in sorted(summary.by_size.items()))
    models = ", ".join(f"{n} x {name}" for name, n in sorted(summary.by_model.items()))
    click.echo(f"{manifest}: ok: {plural(summary.jobs, 'job')}, {plural(summary.jobs, 'image')} "
               f"({sizes})")
    click.echo(f"models: {models}; reference images sent: {summary.references}")


@main.command()
@click.argument("run_dir", type=RunDir(path_type=Path, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guarded
def status(run_dir: Path, as_json: bool) -> None:
    """Counts and spend of a run folder (needs no manifest and no key)."""
    from ..batch.status import batch_rows, format_batches
    from ..reporting.status import format_status, load_status

    st = load_status(run_dir)
    batches = batch_rows(run_dir)
    if as_json:
        import orjson

        extra = {"batches": batches} if batches else {}  # only a folder batch mode used
        click.echo(orjson.dumps({**st.to_json(), **extra}).decode())
    else:
        click.echo(format_status(st) + ("\n" + format_batches(batches) if batches else ""))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask (for scripts).")
@click.option("--provider", type=click.Choice(["anyfast", "google"]), help="[from run.json]")
@click.option("--base-url", help="[from run.json]")
@guarded
def cancel(run_dir: Path, yes: bool, provider: str | None, base_url: str | None) -> None:
    """Cancel the run folder's running batches; their jobs go back to pending."""
    from .batch_cmd import cancel_command

    setup_logging(0)
    sys.exit(cancel_command(run_dir, yes, provider, base_url))


@main.command("fake-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--key", default="fake-key", show_default=True, help="The key it accepts.")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds per answer.")
@click.option("--full-size", is_flag=True, help="Real pixel sizes instead of small images.")
@click.option("--fault", "faults", multiple=True, metavar="NAME=RATE",
              help="e.g. --fault 429=0.1 --fault 503=0.05 (repeatable).")
@click.option("--rpm", type=int, help="Requests allowed per --rate-window (a quota limiter).")
@click.option("--ipm", type=int, help="Images allowed per --rate-window.")
@click.option("--rate-window", type=click.FloatRange(min=0.001, min_open=True), default=60.0,
              show_default=True, help="Seconds the limiter counts over (1, 10, 60...).")
@click.option("--rate-window-kind", type=click.Choice(["sliding", "fixed"]), default="sliding",
              show_default=True, help="Count over the last N seconds, or per fixed N-second slot.")
@click.option("--rate-limit-style", type=click.Choice(["quota", "capacity"]), default="quota",
              show_default=True,
              help="Refuse with a quota 429 and RetryInfo, or an overload 429 with no delay.")
@click.option(
    "--url-output", type=click.Choice(["file_data", "text", "markdown", "escaped", "data"])
)
@click.option("--batch-seconds", type=click.FloatRange(0.0), default=2.0, show_default=True,
              help="Seconds a batch takes from create to done.")
@click.option("--batch-fault", "batch_faults", multiple=True, metavar="NAME=VALUE",
              help="duplicate_rate=0.1, line_error_rate=0.1, create_503=1, expire=1, fail=1, "
                   "output_lag=2.")
def fake_server(host: str, port: int, key: str, latency: float, full_size: bool,
                faults: tuple[str, ...], rpm: int | None, ipm: int | None, rate_window: float,
                rate_window_kind: str, rate_limit_style: str, url_output: str | None,
                batch_seconds: float, batch_faults: tuple[str, ...]) -> None:
    """Serve the fake Gemini API on loopback, for trying batchgen without a key."""
    from ..fake import FAULT_NAMES, FakeConfig, run_forever

    rates: dict[str, float] = {}
    for item in faults:
        name, _, rate = item.partition("=")
        try:
            rates[name] = float(rate)
        except ValueError:
            fail(f"--fault {item!r}: expected NAME=RATE, e.g. 503=0.1")
        if name not in FAULT_NAMES:
            fail(f"--fault {item!r}: unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
        if not 0.0 <= rates[name] <= 1.0:
            fail(f"--fault {item!r}: the rate is a probability from 0 to 1, e.g. {name}=0.1")
    batch: dict[str, Any] = {}
    kinds = {"duplicate_rate": float, "line_error_rate": float, "create_503": int,
             "expire": bool, "fail": bool, "output_lag": int}
    for item in batch_faults:
        name, _, value = item.partition("=")
        if name not in kinds:
            fail(f"--batch-fault {item!r}: NAME is one of {', '.join(kinds)}")
        try:
            batch[f"batch_{name}"] = kinds[name](float(value))
        except ValueError:
            fail(f"--batch-fault {item!r}: expected NAME=NUMBER, e.g. duplicate_rate=0.1")
    try:
        config = FakeConfig(api_key=key, latency_s=latency, full_size=full_size, faults=rates,
                            rpm_limit=rpm, ipm_limit=ipm, rate_window_s=rate_window,
                            rate_window_kind=rate_window_kind, rate_limit_style=rate_limit_style,
                            url_output=url_output, batch_seconds=batch_seconds, **batch)
    except ValueError as exc:
        fail(str(exc))
    run_forever(config, host, port)


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Run folder [jobs/<manifest stem>].")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option("--rpm", type=click.FloatRange(min=1), help="Requests per minute, at most.")
@click.option("--latency", type=click.FloatRange(0.0), default=30.0, show_default=True,
              help="Assumed seconds per image.")
@click.option("--prices", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--model", help="Model id for every job.")
@click.option("--provider", type=click.Choice(["anyfast", "google"]), envvar="BATCHGEN_PROVIDER",
              help="Overrides the manifest's provider [anyfast].")
@click.option("--retry-failed", is_flag=False, flag_value="all", default=None, metavar="[KINDS]",
              help="Count permanent failures too, as run does. " + RETRY_HELP)
@click.option("--limit", type=click.IntRange(1), help="Only the first N pending jobs.")
@click.option("--only", metavar="ID_GLOB", help="Only jobs whose id matches.")
@click.option("--shard", metavar="K/N", help="Only this machine's share of the jobs.")
@click.option("--redo-missing", is_flag=True,
              help="Count the succeeded jobs whose image file is gone, as run --redo-missing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--mode", type=click.Choice(["live", "batch"]), default="live", show_default=True,
              help="batch: show live and batch cost side by side.")
@guarded
def estimate(manifest: Path, **o: Any) -> None:
    """What running MANIFEST would cost and take, before anything is spent."""
    from ..planning.plan import Selection
    from ..reporting.estimate import EstimateRequest, format_estimate
    from ..reporting.estimate import estimate as make_estimate

    setup_logging(0)
    selection = Selection(retry_failed=parse_retry_kinds(o["retry_failed"]), only=o["only"],
                          shard=parse_shard(o["shard"]), limit=o["limit"],
                          redo_missing=o["redo_missing"])
    est = make_estimate(EstimateRequest(
        manifest=manifest, out=o["out"], concurrency=o["concurrency"], rpm=o["rpm"],
        latency_s=o["latency"], prices=o["prices"], model=o["model"], provider=o["provider"],
        selection=selection,
    ))
    for warning in est.warnings:
        click.echo(f"warning: {warning}", err=True)
    side, extra = "", dict[str, Any]()
    if o["mode"] == "batch":
        from .batch_cmd import estimate_side_by_side

        side, extra = estimate_side_by_side(est, o["prices"])
    if o["as_json"]:
        import orjson

        click.echo(orjson.dumps({**est.to_json(), **extra}).decode())
    else:
        click.echo(format_estimate(est) + side)


@main.command()
@click.argument("run_dir", type=RunDir(path_type=Path, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@guarded
def report(run_dir: Path, as_json: bool) -> None:
    """Errors, latency, attempts, spend and throughput of a run folder."""
    from ..reporting.report import build_report, format_report

    setup_logging(0)
    rep = build_report(run_dir)
    if as_json:
        import orjson

        click.echo(orjson.dumps(rep.to_json()).decode())
    else:
        click.echo(format_report(rep))


@main.command()
@click.argument("run_dir", type=RunDir(path_type=Path, exists=True))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="The page to write [DIR/gallery.html].")
@guarded
def gallery(run_dir: Path, out: Path | None) -> None:
    """A static HTML page of a run folder's images and failures (thumbnails in DIR/thumbs)."""
    from ..reporting.gallery import build_gallery
    from ..words import plural

    setup_logging(0)
    res = build_gallery(run_dir, out)
    click.echo(
        f"{plural(res.succeeded, 'image')}, {res.failed} failed"
        + (f", {res.superseded} superseded" if res.superseded else "")
        + f"; thumbnails: {res.thumbs_made} made, "
        f"{res.thumbs_reused} reused; {res.elapsed_s:.1f}s"
        + (f"; {plural(res.missing, 'image')} missing on disk" if res.missing else ""),
        err=True,
    )
    click.echo(str(res.path))


@main.command()
@click.argument("run_dir", type=RunDir(path_type=Path, exists=True))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@guarded
def prune(run_dir: Path, yes: bool) -> None:
    """Move the images of edited or removed rows (superseded jobs) to DIR/superseded/."""
    from ..folder.superseded import prune_folder

    setup_logging(0)
    prune_folder(
        run_dir,
        yes=yes,
        interactive=sys.stdin.isatty(),
        confirm=click.confirm,
        say=click.echo,
        note=lambda text: click.echo(text, err=True),
    )


@main.command()
@click.argument("run_dirs", nargs=-1, required=True,
                type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The merged run folder (not one of the inputs).")
@guarded
def merge(run_dirs: tuple[Path, ...], out: Path) -> None:
    """Combine the run folders of several shards into one."""
    from ..folder.merge import merge as merge_folders
    from ..words import plural

    setup_logging(0)
    res = merge_folders(list(run_dirs), out)
    click.echo(
        f"merged {plural(res.inputs, 'run folder')} into {res.out}: {plural(res.jobs, 'job')}, "
        f"{res.succeeded} succeeded, {res.failed} failed; files: {res.linked} linked, "
        f"{res.copied} copied, {res.kept} already there"
        + (f"; {res.missing} missing (not merged)" if res.missing else "")
    )


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["imagefolder", "webdataset", "parquet"]),
              required=True)
@click.option("--out", required=True, help="A folder, or an fsspec URL such as s3://bucket/prefix.")
@click.option("--split", metavar="NAME=FRACTION,...",
              help="e.g. train=0.9,test=0.1: by a hash of the job id, the same on every export.")
@click.option("--rows-per-file", type=click.IntRange(1), default=10_000, show_default=True,
              help="Rows per Parquet file, samples per WebDataset shard.")
@click.option("--shard-size", default="500MB", show_default=True,
              help="Bytes per Parquet file or WebDataset shard, at most (about, for Parquet).")
@click.option("--include-failed", is_flag=True,
              help="Failed jobs too, without an image (parquet and webdataset).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@guarded
def export_cmd(run_dir: Path, fmt: str, out: str, split: str | None, rows_per_file: int,
               shard_size: str, include_failed: bool, no_progress: bool) -> None:
    """Write a run folder's images and metadata as a dataset (imagefolder, webdataset, parquet)."""
    from ..export import ExportFormat, ExportRequest, export, parse_size, summary

    setup_logging(0)
    try:
        res = export(ExportRequest(
            run_dir=run_dir, fmt=ExportFormat(fmt), out=out, split=split,
            rows_per_file=rows_per_file, shard_bytes=parse_size(shard_size, "--shard-size"),
            include_failed=include_failed, progress=not no_progress,
        ))
    except KeyboardInterrupt:
        fail(f"interrupted; {out} is as it was", ExitCode.INTERRUPTED)
    click.echo(summary(res), err=True)
    click.echo(res.out)


if __name__ == "__main__":
    main()
