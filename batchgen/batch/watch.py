"""What a batch run shows while it waits, and ``status --refresh``'s one poll.

On a terminal, a bar: batches by state, jobs collected, spend, the next poll. Otherwise (cron,
a log file) one line every poll, at most one per ``--log-every`` seconds, saying the same: an
unattended ``--wait`` is never silent for long.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from ..folder.batches import Journal, record_seen
from ..folder.layout import now_iso
from ..progress import Progress
from ..settings import ClientSettings
from .collect import Tally
from .status import by_state, state_word
from .wire import BatchAPI, batch_info, stats_of


def _states(journal: Journal) -> str:
    rows = [{"state": r.state if r.phase.open else (r.state or r.phase.value)}
            for r in journal.all_records() if r.jobs]
    return by_state(rows) or "none"


class Watch:
    """The bar on a terminal, or progress lines when nobody watches one."""

    def __init__(self, *, tty: bool, log_every_s: float, enabled: bool = True) -> None:
        self.tty = tty and enabled
        self.log_every_s = log_every_s if not tty else 0.0
        self.bar: tqdm[NoReturn] | None = None
        self._last_line = float("-inf")

    def show(self, journal: Journal, tally: Tally, next_poll_s: float | None = None) -> None:
        recs = [r for r in journal.all_records() if r.jobs]
        total = sum(r.jobs for r in recs)
        collected = sum(r.jobs for r in recs if not r.phase.open)
        nxt = f"next poll in {next_poll_s:.0f}s" if next_poll_s is not None else "done"
        if self.tty:
            if self.bar is None:
                size = shutil.get_terminal_size((120, 24))
                self.bar = tqdm(total=0, file=sys.stderr, unit="job", ncols=size.columns,
                                nrows=size.lines)
            bar = self.bar
            bar.total, bar.n = total, collected
            bar.set_description_str(f"batches: {_states(journal)}", refresh=False)
            bar.set_postfix_str(f"ok={tally.succeeded} failed={tally.failed} "
                                f"${tally.spent_usd:.2f} {nxt}", refresh=False)
            bar.refresh()
            return
        now = time.monotonic()
        if not self.log_every_s or now - self._last_line < self.log_every_s:
            return
        self._last_line = now
        Progress.write(
            f"{now_iso()} batches: {_states(journal)}; jobs collected {collected}/{total} "
            f"({tally.succeeded} succeeded, {tally.failed} failed); spent ${tally.spent_usd:.2f} "
            f"at batch prices; {nxt}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


async def refresh_states(settings: ClientSettings, run_dir: Path) -> dict[str, str]:
    """Poll the service once for every created, open batch: its state into the journal (when it
    changed) and into ``seen.json``. Collecting is left to the next run, which holds the lock."""
    journal = Journal(run_dir)
    seen: dict[str, str] = {}
    async with BatchAPI(settings) as api:
        for rec in journal.open_records():
            if rec.name is None:
                continue
            op = await api.get(rec.name)
            state = str(batch_info(op).get("state") or "")
            if state != rec.state:
                journal.update(rec.display_name, state=state, counts=stats_of(op))
            seen[rec.display_name] = state
    record_seen(run_dir, seen)
    return {name: state_word(s) for name, s in seen.items()}
