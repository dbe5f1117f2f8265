"""The progress bar: done, failed, retrying, images per minute, spend and ETA, on stderr.

Off with ``--no-progress`` or when stderr is not a terminal. When stderr is not a terminal (nohup,
cron, a scheduler) a progress *line* goes to stderr every ``--log-every`` seconds instead, and a
stop is logged the moment it happens: an unattended log otherwise held only the first line until
the end. The key never reaches either: they show counts and money only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sys
import time
from typing import NoReturn

from tqdm import tqdm

ONE_LINE_MAX = 200
# tqdm's default without its "{rate_fmt}": the postfix carries the one rate shown.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def one_line(value: object, width: int = ONE_LINE_MAX) -> str:
    """A message on one line, cut to ``width``: a server's 429 body spans several."""
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


class Progress:
    def __init__(
        self, total: int, *, enabled: bool, spent_usd: float = 0.0, log_every_s: float = 0.0,
        note: str = "", quiet: bool = False,
    ) -> None:
        # -q: the run says nothing while it runs, but a stop the user asked for (Ctrl-C).
        self.quiet = quiet
        # What the bar and every progress line add, e.g. "flex: answers take 1-15 min".
        self.note = note
        tty = sys.stderr.isatty()
        self.enabled = enabled and tty
        self.total = total
        self.done = 0
        self.failed = 0
        self.failed_kinds: dict[str, int] = {}  # error kind -> jobs failed with it
        self.retries = 0
        self.spent_usd = spent_usd
        self.spent_before_usd = spent_usd
        # Progress lines instead of a bar when nobody watches a terminal; 0 turns them off.
        self.log_every_s = log_every_s if not tty and log_every_s > 0 else 0.0
        self._t0 = time.monotonic()
        self._bar: tqdm[NoReturn] | None = None
        if self.enabled:
            size = shutil.get_terminal_size((120, 24))
            self._bar = tqdm(
                total=total,
                file=sys.stderr,
                unit="img",
                # A terminal that reports a 0x0 size (some ptys) would get an empty bar.
                ncols=size.columns,
                nrows=size.lines,
                smoothing=0.1,
                desc=note or None,
                # One rate: tqdm's own (img/s, smoothed over every finished job) disagreed with
                # the postfix's succeeded images a minute, the unit the progress lines use.
                bar_format=BAR_FORMAT,
            )
            self._refresh()

    def _refresh(self) -> None:
        if self._bar is None:
            return
        minutes = max(time.monotonic() - self._t0, 1e-6) / 60
        self._bar.set_postfix_str(
            f"ok={self.done} failed={self.failed}{self.kinds()} retrying={self.retries} "
            f"{self.done / minutes:.1f} img/min ${self.spent_usd:.2f}",
            refresh=False,
        )

    def job_done(self, *, ok: bool, kind: str | None = None) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
            if kind:
                self.failed_kinds[kind] = self.failed_kinds.get(kind, 0) + 1
        if self._bar is not None:
            self._refresh()
            self._bar.update(1)

    def kinds(self) -> str:
        """`` (connection 24)``, after the failures' count: by kind, most first, so that a run
        failing for one reason says which while it runs."""
        kinds = sorted(self.failed_kinds.items(), key=lambda kv: (-kv[1], kv[0]))
        return f" ({', '.join(f'{k} {n}' for k, n in kinds)})" if kinds else ""

    def retrying(self, delta: int) -> None:
        self.retries += delta
        if self._bar is not None:
            self._refresh()

    def spent(self, total_usd: float) -> None:
        self.spent_usd = total_usd

    def close(self) -> None:
        if self._bar is not None:
            self._refresh()
            self._bar.close()
            self._bar = None

    def status_line(self) -> str:
        """done, failed, retrying, rate, spend and ETA, for an unattended log."""
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        per_min = self.done / elapsed * 60
        finished = self.done + self.failed
        left = max(self.total - finished, 0)
        eta = _duration(left / (finished / elapsed)) if finished else "unknown"
        return (
            f"progress: {finished}/{self.total} finished ({self.done} succeeded, "
            f"{self.failed} failed{self.kinds()}), {self.retries} retrying, "
            f"{per_min:.1f} img/min, "
            f"spent this run ${self.spent_usd - self.spent_before_usd:.2f} "
            f"(folder ${self.spent_usd:.2f}), ETA {eta}"
            + (f"; {self.note}" if self.note else "")
        )

    async def heartbeat(self) -> None:
        """Every ``log_every_s`` seconds a :meth:`status_line`, until cancelled."""
        if not self.log_every_s:
            return
        while True:
            await asyncio.sleep(self.log_every_s)
            self.write(f"{_stamp()} {self.status_line()}")

    @staticmethod
    def write(message: str) -> None:
        """Print a line without tearing the bar."""
        tqdm.write(message, file=sys.stderr)


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
