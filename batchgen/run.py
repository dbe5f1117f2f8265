"""``batchgen run`` from top to bottom: manifest -> plan -> pool -> client -> store -> ledger.

Everything that can be checked is checked before the first request: the manifest, the key, the
run folder. Only then is anything sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import GeminiClient
from .config import PROVIDERS, ClientSettings, RunSettings, check_base_url, resolve_key
from .current import CurrentWriter
from .errors import BatchgenError, InputError, StorageError
from .intents import IntentJournal, Unsettled
from .layout import LOCK_FILE
from .ledger import LedgerRecord, LedgerWriter
from .manifest import Manifest, ValidationSummary
from .ownership import manifest_key, owner_problem
from .plan import (
    MISSING,
    SUCCEEDED,
    LedgerIndex,
    Plan,
    PlanCounts,
    RunFolder,
    Selection,
    manifest_sha256,
    mark_in_batch,
    now_iso,
    read_index,
)
from .pool import Runner, RunResult, StopReason
from .pricing import PriceTable
from .progress import Progress
from .redact import redact, register_secret
from .spec import Provider
from .store import ImageStore
from .superseded import Tally as _Tally
from .superseded import describe_resume, restore_superseded
from .superseded import previous_ids as _previous_ids

if TYPE_CHECKING:
    from .messages import CommandLine

log = logging.getLogger(__name__)

FAKE_KEY = "fake-key"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRequest:
    """What the user asked for on the command line, before it is checked."""

    manifest: Path
    out: Path | None = None
    fake: bool = False
    provider: str | None = None
    base_url: str | None = None
    model: str | None = None
    timeout_s: float = 300.0
    reference_timeout_s: float = 60.0
    prices: Path | None = None
    yes: bool = False
    confirm_above_usd: float = 20.0
    log_every_s: float = 60.0  # progress lines when stderr is not a terminal; 0: none
    settings: dict[str, Any]


@dataclass(slots=True)
class Prepared:
    manifest: Manifest
    summary: ValidationSummary
    folder: RunFolder
    plan: Plan
    counts: PlanCounts
    client: ClientSettings
    settings: RunSettings
    prices: PriceTable
    spent_before_usd: float
    unsettled: Unsettled
    change: str | None
    orphans: list[LedgerRecord]
    lock_fd: int
    tally: _Tally | None = None


def default_out(manifest: Path) -> Path:
    return Path("jobs") / manifest.stem


def open_manifest(path: Path, model: str | None, provider: str | None) -> Manifest:
    """Open with the request limit of the provider that will be used."""
    first = Manifest(path, model=model)
    chosen = _provider(provider or first.header.provider, path)
    if PROVIDERS[chosen].max_request_bytes == 20 * 1024 * 1024:
        return first
    return Manifest(path, model=model, max_request_bytes=PROVIDERS[chosen].max_request_bytes)


def _provider(value: str | None, where: Path) -> Provider:
    try:
        return Provider(value or Provider.ANYFAST.value)
    except ValueError:
        raise InputError(
            f"{where}: provider: {value!r} is not one of "
            + ", ".join(p.value for p in Provider)
        ) from None


def prepare(req: RunRequest, *, selection: Selection) -> Prepared:
    """Everything before the first request, with one pass over the manifest.

    The plan is counted while the manifest is validated, so the ledger index is read first, under
    the run folder's lock. Bad input still creates nothing: a run folder that does not exist yet
    is neither made nor locked until the manifest, key and prices have passed. Errors are reported
    in the same order as ever (manifest, key, prices, run folder): one found early waits its turn.
    """
    manifest = open_manifest(req.manifest, req.model, req.provider)
    prices: PriceTable | None = None
    prices_error: InputError | None = None
    try:
        prices = PriceTable.load(req.prices)
    except InputError as exc:
        prices_error = exc
    out = req.out or default_out(req.manifest)
    folder = RunFolder(out)
    lock: int | None = None
    lock_error: BatchgenError | None = None
    index = LedgerIndex()
    orphans: list[LedgerRecord] = []
    # Lock first only a folder that an earlier run has used: bad input must create nothing,
    # not even a lock file in a folder that merely exists.
    if (folder.path / LOCK_FILE).exists():
        try:
            lock = folder.lock()
        except (InputError, StorageError) as exc:
            lock_error = exc
    old_meta = folder.read_meta()
    owner = owner_problem(old_meta, req.manifest, folder.path)
    if owner is not None and lock_error is None:
        lock_error = InputError(owner)
    new_sha = manifest_sha256(req.manifest)
    # The current-jobs file is written in the same pass (straight into the folder if it is ours).
    current = CurrentWriter(folder.path if lock is not None and lock_error is None else None)
    in_scope = selection.in_scope
    try:
        if lock is not None and lock_error is None:
            index = read_index(folder.ledger_path)
            orphans = folder.orphans(index)
            mark_in_batch(folder.path, index)
        price = prices.estimate if prices is not None else None
        plan = Plan(manifest.iter_jobs, index, selection, price)
        tally = _Tally(plan, current, _previous_ids(folder.path, old_meta, new_sha))
        summary = manifest.validate(visit=None if lock_error else tally.visit)
        provider = _provider(req.provider or manifest.header.provider, req.manifest)
        info = PROVIDERS[provider]
        base_url = req.base_url or manifest.header.base_url or info.base_url
        where = "--base-url" if req.base_url else f"{req.manifest}: base_url"
        base_url = check_base_url(base_url, where)
        api_key = FAKE_KEY if req.fake else resolve_key(provider)
        # From here on the key is scrubbed from everything, run.json included.
        register_secret(api_key)
        if prices_error is not None:
            raise prices_error
        assert prices is not None
        # Every size and model the plan priced must have a price (exit 2 naming the file).
        price_warnings = prices.check_covered()
        if price_warnings:
            summary = dataclasses.replace(summary, warnings=(*summary.warnings, *price_warnings))
        settings = RunSettings(out_dir=out, **req.settings)
        if lock_error is not None:
            raise lock_error
        if lock is None:
            lock = folder.lock()  # makes the folder
            if _made_meanwhile(folder):
                # Another run made the folder while this one validated: plan against its ledger.
                index = read_index(folder.ledger_path)
                orphans = folder.orphans(index)
                mark_in_batch(folder.path, index)
                plan.index = index
                plan.count(price)
                tally.untouched = 0
        # The jobs the manifest holds now, with their metadata, for exports and reports: written
        # even when nothing is left to run, since an edited label re-runs nothing.
        current.commit(
            folder.path, lambda: (j for j in manifest.iter_jobs() if in_scope(j.job_id))
        )
        restored = restore_superseded(folder.path)
        if restored:
            # Images `prune` had moved aside whose jobs are current again (an edit undone): the
            # plan saw them missing; now they are back, and count as done.
            for job_id in restored:
                if index.states.get(job_id) == MISSING:
                    index.states[job_id] = SUCCEEDED
            plan.count(price)
        counts = plan.counts
        change = describe_resume(old_meta, new_sha, counts, tally.untouched, tally.previous)
    except BaseException:
        current.discard()
        if lock is not None:
            os.close(lock)
        raise
    client = ClientSettings(
        provider=provider,
        base_url=base_url,
        api_key=api_key,
        timeout_s=req.timeout_s,
        reference_timeout_s=req.reference_timeout_s,
        connections=settings.concurrency,
        max_request_bytes=info.max_request_bytes,
    )
    return Prepared(
        manifest=manifest,
        summary=summary,
        folder=folder,
        plan=plan,
        counts=counts,
        client=client,
        settings=settings,
        prices=prices,
        spent_before_usd=index.cost_usd,
        unsettled=index.unsettled,
        change=change,
        orphans=orphans,
        lock_fd=lock,
        tally=tally,
    )


def _made_meanwhile(folder: RunFolder) -> bool:
    """Whether the folder, just locked by :meth:`RunFolder.lock`, holds more than the lock file
    (another run's ledger, or any files at all): then the plan is read again against it."""
    with os.scandir(folder.path) as entries:
        return any(entry.name != LOCK_FILE for entry in entries)


@contextlib.asynccontextmanager
async def _endpoint(prep: Prepared, fake: bool) -> AsyncIterator[ClientSettings]:
    """The real endpoint, or the built-in fake server started on loopback for this run."""
    if not fake:
        yield prep.client
        return
    from .fake import FakeConfig, FakeServer

    async with FakeServer(FakeConfig(api_key=FAKE_KEY)) as server:
        yield dataclasses.replace(prep.client, base_url=server.url, api_key=FAKE_KEY)


def adopt_orphans(prep: Prepared) -> None:
    """Record the images an earlier run saved but never got into the ledger."""
    if not prep.orphans:
        return
    ledger = LedgerWriter(prep.folder.ledger_path)
    try:
        for rec in prep.orphans:
            ledger.append(rec)
            log.warning("adopted %s: saved before the last run stopped, not paid again", rec.job_id)
    finally:
        ledger.close()
    prep.orphans = []


async def execute(prep: Prepared, req: RunRequest) -> RunResult:
    folder, settings = prep.folder, prep.settings
    store = ImageStore(folder.path)
    store.prepare()
    ledger = LedgerWriter(folder.ledger_path)
    ledger.open()
    intents = IntentJournal(folder.path, prep.unsettled, sync_ledger=ledger.sync)
    intents.open()
    meta = folder.read_meta()
    folder.update_meta(
        manifest=str(req.manifest),
        manifest_path=manifest_key(req.manifest),
        manifest_sha256=manifest_sha256(req.manifest),
        jobs=prep.counts.total,
        model=prep.manifest.header.model,
        provider=prep.client.provider.value,
        base_url=redact(req.base_url or prep.client.base_url),
        settings=_settings_meta(settings),
        state="running",
        started_at=now_iso(),
        runs=int(meta.get("runs", 0)) + 1,
        command=command_line(),
    )
    progress = Progress(
        prep.counts.pending,
        enabled=settings.progress,
        spent_usd=prep.spent_before_usd,
        log_every_s=req.log_every_s,
    )
    loop = asyncio.get_running_loop()
    try:
        async with _endpoint(prep, req.fake) as client_settings, GeminiClient(
            client_settings
        ) as client:
            runner = Runner(
                client=client,
                store=store,
                ledger=ledger,
                prices=prep.prices,
                settings=settings,
                progress=progress,
                spent_before_usd=prep.spent_before_usd,
                intents=intents,
            )
            restore = _install_signals(loop, runner.interrupt)
            beat = asyncio.create_task(progress.heartbeat())
            try:
                result = await runner.run(prep.plan)
            finally:
                beat.cancel()
                restore()
    finally:
        store.close()  # finishes the saves still queued, then stops the writer
        progress.close()
        try:
            ledger.close()
        except StorageError as exc:
            log.error("%s", exc)
        try:
            intents.close()  # after the ledger: what it settled is on disk
        except StorageError as exc:
            log.error("%s", exc)
    state = "finished" if result.stop_reason is StopReason.COMPLETED else result.stop_reason.value
    with contextlib.suppress(StorageError):
        folder.update_meta(state=state)
    return result


def _install_signals(
    loop: asyncio.AbstractEventLoop, handler: Callable[[str], None]
) -> Callable[[], None]:
    """SIGINT, SIGTERM and SIGHUP (an ssh session that drops) all stop the run the same way:
    gracefully the first time, at once the second."""
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, handler, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore


def _settings_meta(settings: RunSettings) -> dict[str, Any]:
    return {
        "concurrency": settings.concurrency,
        "max_attempts": settings.max_attempts,
        "rpm": settings.rpm,
        "ipm": settings.ipm,
        "retry_blocked": settings.retry_blocked,
        "budget_usd": settings.budget_usd,
        "shard": list(settings.shard) if settings.shard else None,
    }


def command_line() -> str:
    """The command as typed, to print as the way to resume. Never carries a key: keys are env."""
    args = [a for a in sys.argv[1:]]
    return redact("batchgen " + shlex.join(args))


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
    from .messages import CommandLine, suggest_budget
    from .words import plural

    end = end or Ending(cmd=CommandLine("run", tuple(sys.argv[2:3]), (), {}))
    cmd = end.cmd
    errors = ", ".join(
        f"{k} {v}" for k, v in sorted(result.errors.items()) if k not in _RUN_STOPPERS
    )
    this_run = result.spent_usd - end.spent_before_usd
    reason = result.stop_reason
    lines: list[str] = []
    if result.succeeded or result.failed or reason is not StopReason.FATAL:
        lines.append(
            f"done: {result.succeeded} succeeded, {result.failed} failed"
            + (f" ({errors})" if errors else "")
            + f"; spent this run ${this_run:.2f}, folder ${result.spent_usd:.2f}; "
            f"{result.elapsed_s:.1f}s; images in {out / 'images'}"
        )
    if result.unsettled_requests:
        lines.append(
            f"plus ${result.unsettled_usd:.2f} reserved for {result.unsettled_requests} "
            "request(s) that were in flight when an earlier run died (counted toward --budget)"
        )
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
        lines.append(f"interrupted; to resume: {cmd.render()}")
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
        lines.append(f"stopped: {redact(result.stop_message)}")
        lines.append(f"fix the cause, then resume with: {cmd.render()}")
    return lines
