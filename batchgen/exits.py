"""Exit codes: the one table every command and the batch driver return from.

Scripts and cron jobs branch on these, so they never change meaning (README, "Output and exit
codes").
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # every job succeeded (or there was nothing to do)
    FAILED = 1  # the run finished and some jobs failed
    INPUT = 2  # bad input or usage: nothing was sent
    BUDGET = 3  # the budget was reached
    FATAL = 4  # a fatal error stopped the run: bad key, unknown model, daily quota, disk full
    RUNNING = 5  # batch mode: batches are still running; run again to collect them
    INTERRUPTED = 130  # Ctrl-C, SIGTERM or SIGHUP


# By StopReason value (live.outcome.StopReason is a str Enum, not imported here so that
# `status` and `--help` need none of the pipeline).
STOP_EXIT: dict[str, ExitCode] = {
    "interrupted": ExitCode.INTERRUPTED,
    "budget": ExitCode.BUDGET,
    "fatal": ExitCode.FATAL,
    "storage": ExitCode.FATAL,
}
