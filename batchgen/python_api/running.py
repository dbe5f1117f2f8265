"""``batchgen.run``: the live run of ``batchgen run``, called from Python.

The same pipeline as the command (``prepare`` -> orphans adopted -> ``live.runner.execute``), the
same typed options (:mod:`batchgen.settings`), and the same files in the run folder, so a folder
started from a notebook resumes from the shell and back. What the command prints is returned
instead: nothing reaches stdout or stderr unless ``progress=True`` (the bar on a terminal) or the
caller configures logging (batchgen's logger has a ``NullHandler``, as a library's should).

Inside a running event loop (Jupyter, an async pipeline) ``asyncio.run`` is not allowed, so the
run goes to a worker thread with a loop of its own and the call blocks until it ends; signals
are the main thread's, so there a run stops at its budget, its end or an exception only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..errors import BatchgenError, InputError
from ..live.outcome import StopReason
from ..redact import redact
from ..settings import (
    Interaction,
    RunOptions,
    RunSettings,
    Selection,
    Target,
    Timeouts,
    tier_timeout,
)

log = logging.getLogger(__name__)
logging.getLogger("batchgen").addHandler(logging.NullHandler())

JobDicts = Sequence[Mapping[str, Any]]
ManifestLike = Union[str, "os.PathLike[str]", Mapping[str, Any], JobDicts]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What a run did::

        RunResult(folder=Path("jobs/pets"), succeeded=8, failed=0, spent_usd=1.07, ...)

    ``spent_usd`` is this run's spend; ``folder_spent_usd`` everything the folder has spent.
    ``stop_reason`` is "completed", "budget" or "interrupted" (a fatal stop raises
    :class:`RunStopped` instead).
    """

    folder: Path
    manifest: Path
    succeeded: int
    failed: int
    failed_permanent: int
    already_done: int
    spent_usd: float
    folder_spent_usd: float
    stop_reason: StopReason
    stop_message: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every job asked for succeeded: the run completed with no failure."""
        return self.stop_reason is StopReason.COMPLETED and self.failed == 0


class RunStopped(BatchgenError):
    """The run stopped for a reason that would fail every job (a bad key, an unknown model, a
    daily quota, a full disk); ``result`` holds what it did before."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


def run(
    manifest_or_jobs: ManifestLike,
    *,
    out: str | os.PathLike[str] | None = None,
    fake: bool = False,
    provider: str | None = None,
    base_url: str | None = None,
    model: str | None = None,
    prices: str | os.PathLike[str] | None = None,
    columns: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    settings: RunSettings | None = None,
    selection: Selection | None = None,
    timeouts: Timeouts | None = None,
    progress: bool = False,
) -> RunResult:
    """Run every job of the manifest that the run folder does not have yet, live.

    ``manifest_or_jobs``: a manifest's path (YAML, CSV, JSONL), a manifest as a dict
    (``{"defaults": ..., "jobs": [...]}``) or a list of job dicts; the last two are written to
    ``<out>.manifest.yaml`` (next to the run folder, so error messages name a file and line and
    the folder keeps one manifest) and need ``out``. ``columns`` and ``defaults`` are the CLI's
    ``--column FIELD=HEADER`` and ``--set FIELD=VALUE``. The key comes from the environment, as
    for the command (``GEMINI_API_KEY``, ...), or ``fake=True`` runs against the built-in fake.

    Raises :class:`~batchgen.errors.InputError` for bad input (nothing sent, nothing made),
    :class:`RunStopped` for a stop that would fail every job, and other
    :class:`~batchgen.errors.BatchgenError` subclasses; never an aiohttp or OS error.
    """
    manifest = _manifest_path(manifest_or_jobs, out)
    options = RunOptions(
        target=Target(
            manifest=manifest, out=Path(out) if out is not None else None, fake=fake,
            provider=provider, base_url=base_url, model=model,
            prices=Path(prices) if prices is not None else None,
            columns=_pairs(columns, "columns"), defaults=_pairs(defaults, "defaults"),
        ),
        settings=settings or RunSettings(),
        selection=selection or Selection(),
        # A flex run's requests get the flex timeout, as on the command line.
        timeouts=timeouts or Timeouts(
            request_s=tier_timeout(settings.tiers if settings is not None else ())),
        ui=Interaction(yes=True, progress=progress, log_every_s=0.0, gallery=False),
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(options)
    # A loop runs in this thread (Jupyter): the run gets a thread, and a loop, of its own.
    return _in_thread(options)


def _in_thread(options: RunOptions) -> RunResult:
    """The run in a worker thread; a Ctrl-C here (Jupyter's "interrupt the kernel") is passed
    on to it as a signal would be: the first stops it gracefully and the call returns its
    result, the second abandons the requests in flight and raises."""
    stops: list[Callable[[str], None]] = []
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchgen-run")
    try:
        future = pool.submit(_run, options, stops.append)
        try:
            return future.result()
        except KeyboardInterrupt:
            if not stops:
                raise
            stops[0]("SIGINT")
            try:
                return future.result()
            except KeyboardInterrupt:
                stops[0]("SIGINT")
                raise
    finally:
        pool.shutdown(wait=False)


def _pairs(values: Mapping[str, Any] | None, what: str) -> tuple[tuple[str, str], ...]:
    if values is None:
        return ()
    if not isinstance(values, Mapping):
        raise InputError(f"{what}: expected a dict of FIELD -> value, got {type(values).__name__}")
    out = []
    for name, value in values.items():
        # --set takes text, read as the field's own type (as a CSV cell is): a Python value is
        # written as that cell would hold it (True -> true, a list of dicts -> JSON).
        text = value if isinstance(value, str) else (
            "true" if value is True else "false" if value is False
            else json.dumps(value) if isinstance(value, (list, dict)) else str(value))
        out.append((str(name), text))
    return tuple(out)


def _manifest_path(manifest_or_jobs: ManifestLike, out: str | os.PathLike[str] | None) -> Path:
    if isinstance(manifest_or_jobs, (str, os.PathLike)):
        return Path(manifest_or_jobs)
    if isinstance(manifest_or_jobs, Mapping):
        doc: dict[str, Any] = dict(manifest_or_jobs)
    elif isinstance(manifest_or_jobs, Sequence):
        doc = {"jobs": list(manifest_or_jobs)}
    else:
        raise InputError("manifest_or_jobs: expected a path, a manifest dict or a list of job "
                         f"dicts, got {type(manifest_or_jobs).__name__}")
    if out is None:
        raise InputError("out: a run folder is needed when the jobs are given as Python objects "
                         "(they are written to <out>.manifest.yaml)")
    folder = Path(out)
    if folder.name in ("", ".", ".."):
        raise InputError(f"out {folder}: name a folder for the run, e.g. jobs/pets")
    path = folder.with_name(folder.name + ".manifest.yaml")
    import yaml

    text = yaml.safe_dump(_absolute_images(doc), sort_keys=False, allow_unicode=True)
    try:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write the jobs to {path}: {exc.strerror or exc}") from None
    return path


def _absolute_images(doc: dict[str, Any]) -> dict[str, Any]:
    """Reference paths in Python objects are relative to the current directory, not to the
    manifest written next to the run folder: made absolute."""

    def fix(job: Any) -> Any:
        if not isinstance(job, Mapping) or "images" not in job:
            return job
        images = job["images"]
        items = images if isinstance(images, list) else [images]
        fixed = [str(Path(i).resolve()) if isinstance(i, (str, os.PathLike))
                 and "://" not in str(i) else i for i in items]
        return {**job, "images": fixed if isinstance(images, list) else fixed[0]}

    out = dict(doc)
    if isinstance(out.get("jobs"), list):
        out["jobs"] = [fix(j) for j in out["jobs"]]
    if "defaults" in out:
        out["defaults"] = fix(out["defaults"])
    return out


def _run(options: RunOptions,
         interrupter: Callable[[Callable[[str], None]], None] | None = None) -> RunResult:
    from ..live.runner import execute
    from ..planning.prepare import adopt_orphans, prepare
    from ..planning.recall import recall

    options = recall(options)  # the folder's provider, base URL and model when not given
    prep = prepare(options)
    try:
        adopt_orphans(prep)
        c = prep.counts
        warnings = tuple(prep.summary.warnings)
        if c.pending == 0:
            return RunResult(
                folder=prep.folder.path, manifest=options.target.manifest, succeeded=0,
                failed=0, failed_permanent=0, already_done=c.done, spent_usd=0.0,
                folder_spent_usd=prep.spent_before_usd, stop_reason=StopReason.COMPLETED,
                warnings=warnings)
        result = asyncio.run(execute(prep, options, interrupter=interrupter))
    finally:
        os.close(prep.lock_fd)
    out = RunResult(
        folder=prep.folder.path,
        manifest=options.target.manifest,
        succeeded=result.succeeded,
        failed=result.failed,
        failed_permanent=result.failed_permanent,
        already_done=c.done,
        spent_usd=round(result.spent_usd - prep.spent_before_usd, 6),
        folder_spent_usd=result.spent_usd,
        stop_reason=result.stop_reason,
        stop_message=result.stop_message,
        errors=dict(result.errors),
        warnings=warnings,
        elapsed_s=result.elapsed_s,
    )
    if result.stop_reason in (StopReason.FATAL, StopReason.STORAGE):
        raise RunStopped(redact(f"the run stopped: {result.stop_message}"), out)
    return out
