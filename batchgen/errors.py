"""batchgen's exception tree.

Everything that can go wrong with one request ends as one of these, so the pool never has to know
about aiohttp, JSON or OS errors. The client translates at its boundary
(``raise X(...) from exc``)::

    BatchgenError
    ├── InputError                 bad manifest, flags or key: exit 2, nothing sent
    ├── StorageError               disk full, folder unwritable: the run stops, nothing is lost
    └── APIError                   one request's failure (kind, http_status, message, retry_after)
        ├── TransientError         worth another attempt
        │   ├── RateLimitError         429
        │   ├── ServerError            408, 5xx
        │   ├── TimeoutError_          no answer within --timeout
        │   ├── ConnectionError_       refused, reset, dropped
        │   └── BadResponseError       truncated, HTML or non-JSON body
        │       ├── BodyTooLargeError      over the size cap (not retried: see retrying.py)
        │       ├── ResultLostError        a billed batch result that cannot be read (not retried)
        │       └── EmptyAnswerError       HTTP 200 with no candidates and no block reason
        ├── PermanentError         recorded once, not retried
        │   ├── InvalidRequestError    400 INVALID_ARGUMENT / FAILED_PRECONDITION
        │   ├── BlockedError           promptFeedback.blockReason or a safety finishReason
        │   ├── NoImageError           STOP with no image, NO_IMAGE, ...
        │   └── ReferenceError_        a reference image could not be loaded
        └── FatalError             every other job would fail the same way: stop the run
            ├── AuthError              bad key, 401, 403
            ├── ModelNotFoundError     404
            ├── DailyQuotaError        429 with a PerDay quota
            ├── ServerWaitError        a 503 / 5xx asking to wait longer than the ceiling
            ├── RedirectError          the API endpoint answered 3xx (never followed: the key)
            ├── UnreachableError       never answered, the first connections all failed
            └── TierNotOfferedError    400: the model does not offer the --tier asked for

Whether to retry is decided in one place, :func:`batchgen.retrying.should_retry`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ErrorKind(str, enum.Enum):
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    BAD_RESPONSE = "bad_response"
    INVALID_REQUEST = "invalid_request"
    BLOCKED = "blocked"
    NO_IMAGE = "no_image"
    REFERENCE = "reference"
    AUTH = "auth"
    MODEL_NOT_FOUND = "model_not_found"
    DAILY_QUOTA = "daily_quota"
    SERVER_WAIT = "server_wait"
    REDIRECT = "redirect"
    TIER_NOT_OFFERED = "tier_not_offered"
    PARENT_FAILED = "parent_failed"


class BatchgenError(Exception):
    """Base of every error batchgen raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, located to file, line and field."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class InputError(BatchgenError):
    """Bad input or usage. The CLI prints each problem on one line and exits 2."""

    def __init__(self, problems: list[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", 0, "", problems)]
        self.problems = problems
        super().__init__("\n".join(str(p).lstrip(": ") for p in problems))


class StorageError(BatchgenError):
    """Writing an image or the ledger failed; the run must stop before it pays for more."""


class APIError(BatchgenError):
    kind: ErrorKind = ErrorKind.BAD_RESPONSE

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        kind: ErrorKind | None = None,
        usage: dict[str, object] | None = None,
        maybe_billed: bool = False,
        answered: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after
        # A blocked or text-only answer is still billed; keep what the server said it used.
        self.usage = usage
        # The server may have generated (and billed) an image we never received in full.
        self.maybe_billed = maybe_billed
        # The generateContent endpoint itself answered (as opposed to: nothing came back, or a
        # reference could not be loaded). Until one answer is in, only one request goes out.
        self.answered = answered
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        status = f"HTTP {self.http_status}: " if self.http_status else ""
        return f"{self.kind.value}: {status}{self.message}"


class TransientError(APIError):
    pass


class RateLimitError(TransientError):
    kind = ErrorKind.RATE_LIMITED


class ServerError(TransientError):
    kind = ErrorKind.SERVER_ERROR


class TimeoutError_(TransientError):
    kind = ErrorKind.TIMEOUT


class ConnectionError_(TransientError):
    kind = ErrorKind.CONNECTION

    def __init__(self, message: str, *, unreached: str | None = None,
                 reason: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        # Set when no connection could be made at all (refused, a name DNS does not know, a
        # TLS handshake that failed): the host ("127.0.0.1:1") and why, in a few words.
        self.unreached = unreached
        self.reason = reason


class BadResponseError(TransientError):
    kind = ErrorKind.BAD_RESPONSE


class BodyTooLargeError(BadResponseError):
    """A body over its cap (API answer, URL reference or URL output), counted after gzip."""


class ResultLostError(BadResponseError):
    """A batch result the service billed that cannot be read: a line still unreadable after
    the file was downloaded again, or a results file that is gone. Charged at its estimate and
    not resubmitted by itself (that would pay again); ``--retry-failed bad_response`` does."""


class EmptyAnswerError(BadResponseError):
    """HTTP 200 with no candidates and no block reason: a glitch, not a verdict. Nothing was
    generated, so nothing is billed for the image; the attempt is retried."""


class PermanentError(APIError):
    pass


class InvalidRequestError(PermanentError):
    kind = ErrorKind.INVALID_REQUEST


class BlockedError(PermanentError):
    kind = ErrorKind.BLOCKED


class NoImageError(PermanentError):
    kind = ErrorKind.NO_IMAGE


class ReferenceError_(PermanentError):
    kind = ErrorKind.REFERENCE


class ParentFailedError(PermanentError):
    """A chained job whose parent failed for good: never sent, never billed (issue 22)."""

    kind = ErrorKind.PARENT_FAILED


class FatalError(APIError):
    pass


class AuthError(FatalError):
    kind = ErrorKind.AUTH


class ModelNotFoundError(FatalError):
    kind = ErrorKind.MODEL_NOT_FOUND


class DailyQuotaError(FatalError):
    kind = ErrorKind.DAILY_QUOTA


class ServerWaitError(FatalError):
    kind = ErrorKind.SERVER_WAIT


class RedirectError(FatalError):
    kind = ErrorKind.REDIRECT


class UnreachableError(FatalError):
    """The endpoint has never answered and the first attempts all failed to connect: every
    other request would fail the same way, so the run stops with its jobs still pending."""

    kind = ErrorKind.CONNECTION

    def __str__(self) -> str:
        return self.message


class TierNotOfferedError(FatalError):
    """Every request on that tier would be refused the same way: stop, like a wrong key."""

    kind = ErrorKind.TIER_NOT_OFFERED
