"""Retry policy: the constants and the one function that decides whether to try again.

Mirrors the official SDK (408, 429, 5xx and connection errors; exponential backoff from 1 s to 60 s
with jitter) but, unlike it, honours the wait the server asks for.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import (
    APIError,
    BodyTooLargeError,
    ConnectionError_,
    DailyQuotaError,
    ErrorKind,
    FatalError,
    PermanentError,
    ResultLostError,
    ServerWaitError,
    TransientError,
    UnreachableError,
)

DEFAULT_MAX_ATTEMPTS = 6
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
BACKOFF_JITTER_S = 1.0
# Any wait the server asks for (429 RetryInfo, Retry-After on 429 or 503, "retry in Ns") longer
# than this is a quota that is spent or an outage, not a burst: the run stops and says when to
# resume, instead of every worker sleeping on it silently.
MAX_SERVER_DELAY_S = 15 * 60.0
# Connections that could not be made, with no answer from the endpoint before them, that stop
# the run (exit 4): more than one, so that a single hiccup of a resolver or a proxy starting up
# does not; few, since each is a refusal that costs nothing and tells the same.
UNREACHABLE_AFTER = 3
# Outcomes that are a roll of the dice: the same prompt may well succeed next time.
STOCHASTIC_KINDS = frozenset({ErrorKind.BLOCKED, ErrorKind.NO_IMAGE})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_blocked: int = 0
    backoff_initial_s: float = BACKOFF_INITIAL_S
    backoff_max_s: float = BACKOFF_MAX_S


def is_retryable(exc: APIError) -> bool:
    """Whether an error of this class is worth another attempt at all (the ledger's flag).

    A body over its cap is not: the cap is several times the largest legitimate answer, so the
    next attempt would be as big (a proxy or server that misbehaves, an endless stream), and
    every attempt after an HTTP 200 may be billed. It is recorded once, as bad_response;
    ``--retry-failed bad_response`` runs it again once the endpoint is fixed.
    A batch result that is lost (:class:`ResultLostError`) is not either: it was billed, and
    a resubmission is billed again.
    """
    return isinstance(exc, TransientError) and not isinstance(
        exc, BodyTooLargeError | ResultLostError)


def should_retry(
    exc: BaseException, *, attempt: int, stochastic_failures: int, policy: RetryPolicy
) -> bool:
    """The one place that decides whether a failed attempt is tried again.

    ``attempt`` counts attempts made so far (1 after the first); ``stochastic_failures`` counts
    the blocked / no-image answers among them.
    """
    if not isinstance(exc, APIError) or isinstance(exc, FatalError):
        return False
    if attempt >= policy.max_attempts:
        return False
    if isinstance(exc, TransientError):
        return is_retryable(exc)
    if isinstance(exc, PermanentError) and exc.kind in STOCHASTIC_KINDS:
        return stochastic_failures <= policy.retry_blocked
    return False


class Reachability:
    """Whether the endpoint has ever answered, and the decision to stop when it never has.

    A host that is down (a port nobody listens on, a name DNS does not know, a TLS handshake
    that fails) would otherwise have every job retried and recorded as failed (``connection``):
    minutes of a run that can do nothing. Once the host has answered, one connection error is
    a blip like any other, retried and at worst recorded.
    """

    __slots__ = ("answered", "failures")

    def __init__(self) -> None:
        self.answered = False
        self.failures = 0  # connections that could not be made, before any answer

    def heard(self) -> None:
        """The endpoint answered (anything, an error included)."""
        self.answered = True

    def after(self, exc: APIError) -> FatalError | None:
        """The error that stops the run, if ``exc`` (an attempt's failure) makes the host one
        that cannot be reached; None when the attempt goes on as any other."""
        if exc.answered:
            self.answered = True
        if self.answered or not isinstance(exc, ConnectionError_) or exc.unreached is None:
            return None
        self.failures += 1
        if self.failures < UNREACHABLE_AFTER:
            return None
        return UnreachableError(f"cannot reach {exc.unreached}: {exc.reason}")


def backoff_delay(exc: BaseException, *, attempt: int, policy: RetryPolicy) -> float:
    """How long to wait before attempt ``attempt + 1``: the server's word, else exponential."""
    if isinstance(exc, APIError) and exc.retry_after is not None:
        # A little jitter so that workers told the same delay do not return in lockstep.
        return float(exc.retry_after) + random.uniform(0, min(0.1 * exc.retry_after, 1.0))
    base = min(policy.backoff_max_s, policy.backoff_initial_s * 2.0 ** (attempt - 1))
    return base + random.uniform(0, min(BACKOFF_JITTER_S, policy.backoff_initial_s))


def fatal_message(exc: FatalError) -> str:
    """What to tell the user when an error stops the run, with when to come back."""
    if isinstance(exc, DailyQuotaError | ServerWaitError):
        if exc.retry_after is not None:
            when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=exc.retry_after)
            return f"{exc}; resume after {when:%Y-%m-%d %H:%M} UTC"
        # Daily quotas reset at midnight Pacific time; retrying sooner only burns attempts.
        pacific: dt.tzinfo
        try:
            pacific = ZoneInfo("America/Los_Angeles")
        except ZoneInfoNotFoundError:
            pacific = dt.timezone(dt.timedelta(hours=-8))
        now = dt.datetime.now(pacific)
        reset = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        hours = (reset - now).total_seconds() / 3600
        return (
            f"{exc}; the daily quota resets at midnight Pacific time "
            f"({reset.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, in {hours:.1f} h)"
        )
    return str(exc)
