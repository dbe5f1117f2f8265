"""The progress bar: done, failed, retrying, images per minute, spend and ETA, on stderr.

Off with ``--no-progress`` or when stderr is not a terminal. The key never reaches it: it shows
counts and money only.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import NoReturn

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, *, enabled: bool, spent_usd: float = 0.0) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self.failed = 0
        self.retries = 0
        self.spent_usd = spent_usd
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
            )
            self._refresh()

    def _refresh(self) -> None:
        if self._bar is None:
            return
        minutes = max(time.monotonic() - self._t0, 1e-6) / 60
        self._bar.set_postfix_str(
            f"ok={self.done} failed={self.failed} retrying={self.retries} "
            f"{self.done / minutes:.1f} img/min ${self.spent_usd:.2f}",
            refresh=False,
        )

    def job_done(self, *, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self._bar is not None:
            self._refresh()
            self._bar.update(1)

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

    @staticmethod
    def write(message: str) -> None:
        """Print a line without tearing the bar."""
        tqdm.write(message, file=sys.stderr)
