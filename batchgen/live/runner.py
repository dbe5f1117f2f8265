"""One live run from its plan to its result: the store, the ledger and the intents opened,
``run.json`` kept, the pool run against the endpoint, everything closed in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..api.client import GeminiClient
from ..errors import StorageError
from ..folder.appender import LedgerWriter
from ..folder.intents import IntentJournal
from ..folder.layout import now_iso
from ..folder.verdicts import Redos, has_reviews, rejected_jobs
from ..planning.plan import manifest_meta
from ..planning.prepare import Prepared
from ..planning.recall import run_with
from ..planning.session import command_line, endpoint, install_signals, settings_meta
from ..progress import Progress
from ..redact import redact
from ..settings import RunOptions, tier_note
from ..store.images import ImageStore
from .pool import Runner, RunResult, StopReason

log = logging.getLogger(__name__)


async def execute(prep: Prepared, options: RunOptions, *,
                  interrupter: Callable[[Callable[[str], None]], None] | None = None
                  ) -> RunResult:
    """Run the plan. ``interrupter``, when given, receives a function that stops the run as a
    signal would, callable from any thread (a run in a worker thread has no signals: its caller
    passes the main thread's Ctrl-C on)."""
    folder, target = prep.folder, options.target
    store = ImageStore(folder.path, thumbnails=options.ui.gallery)
    store.prepare()
    ledger = LedgerWriter(folder.ledger_path)
    ledger.open()
    intents = IntentJournal(folder.path, prep.unsettled, sync_ledger=ledger.sync)
    intents.open()
    meta = folder.read_meta()
    folder.update_meta(
        **manifest_meta(target.manifest),
        jobs=prep.counts.total,
        model=prep.manifest.header.model,
        provider=prep.client.provider.value,
        base_url=redact(target.base_url or prep.client.base_url),
        settings=settings_meta(options),
        run_with=run_with(target),
        state="running",
        started_at=now_iso(),
        runs=int(meta.get("runs", 0)) + 1,
        command=command_line(),
    )
    progress = Progress(
        prep.counts.pending,
        enabled=options.ui.progress,
        spent_usd=prep.spent_before_usd,
        log_every_s=options.ui.log_every_s,
        note=tier_note(options.settings.tiers, options.timeouts.request_s),
        quiet=options.ui.quiet,
    )
    loop = asyncio.get_running_loop()
    try:
        async with endpoint(prep.client, target.fake) as client_settings, GeminiClient(
            client_settings
        ) as client:
            runner = Runner(
                client=client,
                store=store,
                ledger=ledger,
                prices=prep.prices,
                settings=options.settings,
                progress=progress,
                spent_before_usd=prep.spent_before_usd,
                intents=intents,
                redos=_redos(prep),
                # Chains: children wait for their parents (live/chains.py).
                lineage=prep.plan.lineage if prep.manifest.chains is not None else None,
                states=prep.plan.index.states,
            )
            restore = install_signals(loop, runner.interrupt)
            if interrupter is not None:
                def from_any_thread(name: str) -> None:
                    with contextlib.suppress(RuntimeError):  # the run (and its loop) ended
                        loop.call_soon_threadsafe(runner.interrupt, name)

                interrupter(from_any_thread)
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



def _redos(prep: Prepared) -> Redos | None:
    """The jobs whose lines say what rejected image they replace: those --redo-rejected chose,
    else a redo that ended in a retryable failure and is sent again by a plain run."""
    jobs = prep.redos or (rejected_jobs(prep.folder.path) if has_reviews(prep.folder.path)
                          else {})
    return Redos(prep.folder.path, jobs) if jobs else None
