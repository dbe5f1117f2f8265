"""The commands that read a run folder: ``status``, ``report``, ``gallery``, ``prune``,
``merge``, ``export`` and ``cancel``. ``status`` must start fast: what it reads is imported when
it runs, and nothing here imports the pipeline up front."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..exits import ExitCode
from .common import fail, guarded, setup_logging
from .options import json_option, read_dir_argument, run_dir_argument


@click.command()
@read_dir_argument
@json_option
@click.option("--refresh", is_flag=True,
              help="Batch mode: ask the service for the batches' states first (needs the key).")
@click.option("--provider", type=click.Choice(["anyfast", "google"]),
              help="With --refresh [from run.json]")
@click.option("--base-url", help="With --refresh [from run.json]")
@guarded
def status(run_dir: Path, as_json: bool, refresh: bool, provider: str | None,
           base_url: str | None) -> None:
    """Counts and spend of a run folder (needs no manifest and no key, but --refresh does)."""
    import dataclasses

    from ..batch.status import batch_rows, format_batches, headline
    from ..reporting.status import format_status, load_status

    if refresh:
        from .batch_cmd import refresh_command

        setup_logging(0)
        refresh_command(run_dir, provider, base_url)
    st = load_status(run_dir)
    batches = batch_rows(run_dir)
    if batches:
        st = dataclasses.replace(st, state=headline(batches, st.state))
    if as_json:
        import orjson

        extra = {"batches": batches} if batches else {}  # only a folder batch mode used
        click.echo(orjson.dumps({**st.to_json(), **extra}).decode())
    else:
        click.echo(format_status(st)
                   + ("\n" + format_batches(batches, run_dir) if batches else ""))


@click.command()
@read_dir_argument
@json_option
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


@click.command()
@read_dir_argument
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="The page to write [DIR/gallery.html].")
@click.option("--open", "open_page", is_flag=True,
              help="Open the page in the web browser ($BROWSER, else the system's).")
@guarded
def gallery(run_dir: Path, out: Path | None, open_page: bool) -> None:
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
    if open_page:
        import webbrowser

        # A file:// URL, absolute: a relative path means nothing to a browser started elsewhere.
        if not webbrowser.open(res.path.resolve().as_uri()):
            click.echo(f"warning: no web browser could be started; open {res.path} by hand",
                       err=True)


@click.command()
@run_dir_argument
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


@click.command()
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


@click.command("export")
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
@click.option("--stratify", metavar="KEY",
              help="With --split: split each value of this column (or meta.KEY) in the asked "
                   "proportions.")
@click.option("--name", "name_template", metavar="TEMPLATE",
              help="File names from columns, e.g. '{meta.sku}-{animal}' (sanitised, made "
                   "unique) [the job id].")
@click.option("--max-side", type=click.IntRange(16), metavar="PIXELS",
              help="Shrink images whose longer side is above this (aspect ratio kept).")
@click.option("--image-format", type=click.Choice(["jpeg", "png", "webp"]),
              help="Re-encode the images [as generated].")
@click.option("--quality", type=click.IntRange(1, 100),
              help="JPEG/WebP quality when re-encoding [95].")
@click.option("--include-failed", is_flag=True,
              help="Failed jobs too, without an image (parquet and webdataset).")
@click.option("--reviewed", type=click.Choice(["default", "accepted", "all"]), default="default",
              show_default=True,
              help="default: all but rejected images; accepted: only accepted ones; all: all.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@guarded
def export_cmd(run_dir: Path, fmt: str, out: str, split: str | None, rows_per_file: int,
               shard_size: str, stratify: str | None, name_template: str | None,
               max_side: int | None, image_format: str | None, quality: int | None,
               include_failed: bool, reviewed: str, no_progress: bool) -> None:
    """Write a run folder's images and metadata as a dataset (imagefolder, webdataset, parquet)."""
    from ..export import ExportFormat, ExportRequest, export, parse_size, summary
    from ..export.encode import ImageFormat, Reencode
    from ..export.source import Reviewed

    setup_logging(0)
    try:
        res = export(ExportRequest(
            run_dir=run_dir, fmt=ExportFormat(fmt), out=out, split=split,
            rows_per_file=rows_per_file, shard_bytes=parse_size(shard_size, "--shard-size"),
            include_failed=include_failed, progress=not no_progress,
            reviewed=Reviewed(reviewed),
            name=name_template, stratify=stratify,
            reencode=Reencode(max_side=max_side, quality=quality,
                              fmt=ImageFormat(image_format) if image_format else None),
        ), say=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        fail(f"interrupted; {out} is as it was", ExitCode.INTERRUPTED)
    click.echo(summary(res), err=True)
    click.echo(res.out)


@click.command()
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


@click.command()
@run_dir_argument
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--reject", is_flag=True, help="Reject these images.")
@click.option("--accept", is_flag=True, help="Accept these images.")
@click.option("--clear", is_flag=True, help="Unreviewed again.")
@click.option("--note", default="", help="Why (kept with the verdict, and on a redo's line).")
@guarded
def mark(run_dir: Path, ids: tuple[str, ...], reject: bool, accept: bool, clear: bool,
         note: str) -> None:
    """Accept or reject the images of job IDs (or globs, as --only takes); DIR/reviews.jsonl."""
    from ..errors import InputError
    from ..folder.reviews import Verdict
    from ..folder.runfolder import read_meta
    from ..folder.verdicts import mark as mark_jobs
    from ..words import plural

    setup_logging(0)
    chosen = [name for name, on in (("rejected", reject), ("accepted", accept),
                                    ("cleared", clear)) if on]
    if len(chosen) != 1:
        raise InputError("say what to do, once: --reject, --accept or --clear")
    verdict = chosen[0]
    done = mark_jobs(run_dir, ids, Verdict(verdict), note)
    what = {"rejected": "rejected", "accepted": "accepted", "cleared": "cleared the verdict of"}
    shown = ", ".join(r.job_id for r in done[:5]) + (", ..." if len(done) > 5 else "")
    click.echo(f"{what[verdict]} {plural(len(done), 'image')}: {shown}", err=True)
    if verdict == "rejected":
        manifest = read_meta(run_dir).get("manifest") or "MANIFEST"
        click.echo(f"to make them again: batchgen run {manifest} --out {run_dir} --redo-rejected",
                   err=True)
