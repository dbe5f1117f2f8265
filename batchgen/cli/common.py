"""What every command shares: logging through the progress bar, one-line errors with the key
scrubbed, and the parsers of the options several commands take."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from ..errors import BatchgenError, InputError
from ..exits import ExitCode
from ..redact import install_log_redaction, redact

P = ParamSpec("P")
R = TypeVar("R")




class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from ..progress import Progress

        try:
            Progress.write(redact(self.format(record)))
        except Exception:  # logging must never take the run down
            self.handleError(record)


def setup_logging(verbose: int) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("batchgen").setLevel(logging.DEBUG if verbose else logging.WARNING)
    install_log_redaction()


def fail(message: str, code: int = ExitCode.INPUT) -> NoReturn:
    click.echo(redact(f"batchgen: {message}"), err=True)
    sys.exit(code)


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn batchgen errors into one-line messages and keep tracebacks free of secrets."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except InputError as exc:
            for problem in exc.problems:
                click.echo(redact(f"batchgen: {str(problem).lstrip(': ')}"), err=True)
            sys.exit(ExitCode.INPUT)
        except BatchgenError as exc:  # StorageError and the like: the run cannot go on
            fail(str(exc), ExitCode.FATAL)
        except KeyboardInterrupt:
            fail("interrupted before anything was sent", ExitCode.INTERRUPTED)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # the last line of defence for the key
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            click.echo(redact(text), err=True)
            sys.exit(ExitCode.FATAL)

    return wrapper


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", value)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise click.BadParameter("must be K/N with 1 <= K <= N, e.g. 2/4", param_hint="--shard")
    return int(m.group(1)), int(m.group(2))


# The kinds a job can be left failed with for good: what --retry-failed can name. Transient
# kinds (rate_limited, server_error, ...) run again anyway; fatal ones stop the run unrecorded;
# bad_response is permanent only for an answer over its size cap (README, "Retries and pacing").
RETRY_KINDS = ("blocked", "no_image", "invalid_request", "reference", "bad_response")


RETRY_HELP = ("Re-run permanent failures too; optionally only these comma-separated kinds: "
              + ", ".join(RETRY_KINDS) + ".")


def parse_retry_kinds(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value == "all":
        return ()
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    for kind in kinds:
        if kind not in RETRY_KINDS:
            import difflib

            close = difflib.get_close_matches(kind, RETRY_KINDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise click.BadParameter(
                f"{kind!r} is not a kind of permanent failure{hint}; the kinds are "
                + ", ".join(RETRY_KINDS) + ", or none for all of them",
                param_hint="--retry-failed",
            )
    return kinds


class RunDir(click.Path):
    """A run folder; a manifest given in its place is pointed at its run folder, or, with
    ``follow_manifest`` (the commands that only read: status, report, gallery), taken to it."""

    name = "run_dir"

    def __init__(self, *args: Any, follow_manifest: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.follow_manifest = follow_manifest

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(os.fsdecode(super().convert(value, param, ctx)))
        if path.is_file():
            from ..planning.prepare import default_out

            folder = default_out(path)
            why = self._why_not(path, folder) if self.follow_manifest else ""
            if self.follow_manifest and not why:
                click.echo(f"{value} is a manifest; showing its run folder {folder}", err=True)
                return folder
            self.fail(
                f"{value} is a file (a manifest?), not a run folder; its run folder is "
                f"{folder} unless --out named another" + why,
                param,
                ctx,
            )
        return path

    @staticmethod
    def _why_not(manifest: Path, folder: Path) -> str:
        """Why ``folder`` cannot be shown for ``manifest`` ("" when it can)."""
        from ..folder.layout import RUN_FILE, read_run_meta
        from ..folder.ownership import owner_problem

        if not (folder / RUN_FILE).is_file():
            return f"; {folder} holds no run yet"
        other = owner_problem(read_run_meta(folder), manifest, folder)
        return f"; {folder} belongs to another manifest" if other else ""
