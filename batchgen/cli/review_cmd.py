"""``batchgen review DIR``: serve the review page of a run folder until Ctrl-C."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..exits import ExitCode
from .common import fail, guarded, setup_logging
from .options import run_dir_argument


@click.command()
@run_dir_argument
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="The port to listen on (0: any free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; one other than loopback needs --allow-remote.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a --host other machines can reach (anyone with the URL can review).")
@click.option("--no-open", is_flag=True, help="Print the URL; do not open a browser.")
@guarded
def review(run_dir: Path, port: int, host: str, allow_remote: bool, no_open: bool) -> None:
    """A local page of the run folder: filter, look, accept and reject with the keyboard.

    It follows a run writing into the folder. Every request needs the token in the URL it
    prints; verdicts go to DIR/reviews.jsonl, as `batchgen mark` writes them."""
    import asyncio

    from ..review.server import ReviewSettings, is_loopback, new_token, serve

    setup_logging(0)
    if not is_loopback(host):
        if not allow_remote:
            fail(f"--host {host}: not a loopback address; other machines could reach the page "
                 "(add --allow-remote if that is what you want)")
        click.echo(f"batchgen: warning: listening on {host}: anyone who can reach it and has "
                   "the URL (it holds the token) can see the images and give verdicts",
                   err=True)
    settings = ReviewSettings(run_dir=run_dir, token=new_token(), host=host, port=port)

    def ready(url: str) -> None:
        click.echo(f"review page of {run_dir} (Ctrl-C to stop):", err=True)
        click.echo(url)
        sys.stdout.flush()
        if not no_open:
            import webbrowser

            webbrowser.open(url)

    try:
        asyncio.run(serve(settings, ready))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", ExitCode.INPUT)
