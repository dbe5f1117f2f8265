"""What a run and each of its jobs come to: the values the pool's parts share.

Kept apart from :mod:`batchgen.pool` so that its parts (:mod:`batchgen.attempt`,
:mod:`batchgen.recorder`) can use them without importing the runner that wires them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import errors as e
from ..aio import Stopped


class StopReason(str, enum.Enum):
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    BUDGET = "budget"
    FATAL = "fatal"
    STORAGE = "storage"


# How a part stops the run: no new jobs or attempts; requests in flight finish and are saved.
StopRun = Callable[[StopReason, str], None]


class Abandoned(Stopped):
    """The run is stopping: leave this job pending (a ledger line only if it cost money)."""


@dataclass(slots=True)
class RunResult:
    succeeded: int = 0
    failed: int = 0
    failed_permanent: int = 0
    spent_usd: float = 0.0
    # Requests earlier runs sent whose outcome never reached the ledger, at their reserved price.
    unsettled_usd: float = 0.0
    unsettled_requests: int = 0
    # Of those, the ones whose job this run made again: their answer will never be read, so
    # they count as spent at that price (folder/intents.py, Unsettled.lost).
    lost_usd: float = 0.0
    lost_requests: int = 0
    stop_reason: StopReason = StopReason.COMPLETED
    stop_message: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass(slots=True)
class JobState:
    """One job's attempts so far: what its ledger line will say."""

    started_at: str = ""
    attempts: int = 0
    stochastic: int = 0
    cost_usd: float = 0.0
    usage: dict[str, object] | None = None
    last_error: e.APIError | None = None
    # --tier: the tier the next attempt goes out on, and the sheds it met there in a row.
    tier: str | None = None
    sheds: int = 0
