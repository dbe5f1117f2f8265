"""The error table of the API boundary: HTTP answers and transport failures as batchgen errors.

Every call to the API (:mod:`.client`, :mod:`batchgen.batch.wire`) goes through here, so one
failure reads the same whichever call met it: :func:`error_from_http` for an HTTP error answer,
:func:`translating` around the I/O for aiohttp, timeout and OS errors. Whether an error is worth
another attempt is decided elsewhere, once (:func:`.retrying.should_retry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import socket
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from .. import errors as e
from ..redact import redact
from .http_body import read_capped
from .retrying import MAX_SERVER_DELAY_S

# An error answer is read only for its message: a megabyte is plenty, the rest is dropped.
ERROR_BODY_MAX_BYTES = 1024 * 1024
# What the transport raises: aiohttp's own errors, a timeout, and the socket's OS errors.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
_PLEASE_RETRY = re.compile(r"retry in ([0-9]+(?:\.[0-9]+)?)\s*(ms|s)\b", re.IGNORECASE)
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)s\s*$")


def parse_retry_delay(details: Any, headers: Any, message: str) -> float | None:
    """The wait the server asks for: RetryInfo in the body, Retry-After, or 'Please retry in Ns'."""
    if isinstance(details, list):
        for d in details:
            if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
                m = _DURATION.match(str(d.get("retryDelay") or d.get("retry_delay") or ""))
                if m:
                    return float(m.group(1))
    header = headers.get("Retry-After") if headers is not None else None
    if header:
        try:
            seconds = float(header)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(header).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError):
                seconds = math.nan
        # "NaN", "inf" or garbage is no instruction at all: treated as absent.
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    m = _PLEASE_RETRY.search(message)
    if m:
        value = float(m.group(1))
        return value / 1000 if m.group(2).lower() == "ms" else value
    return None


def error_from_http(status: int, body: bytes | bytearray, headers: Any) -> e.APIError:
    """The one table from an HTTP error answer to batchgen's error tree."""
    message, rpc_status = "", ""
    details: list[Any] = []
    try:
        err = orjson.loads(body).get("error", {})
        message = str(err.get("message", ""))
        rpc_status = str(err.get("status", ""))
        details = err.get("details") or []
    except (orjson.JSONDecodeError, AttributeError):
        message = snippet(body)
    message = redact(message or f"HTTP {status}")
    retry_after = parse_retry_delay(details, headers, message)
    reasons = {str(d.get("reason", "")) for d in details if isinstance(d, dict)}
    quota_ids = [
        str(v.get("quotaId", ""))
        for d in details
        if isinstance(d, dict)
        for v in (d.get("violations") or [])
        if isinstance(v, dict)
    ]
    kw: dict[str, Any] = {"http_status": status, "retry_after": retry_after}
    if status == 429 and any("PerDay" in q for q in quota_ids):
        return e.DailyQuotaError(message, **kw)
    if (
        retry_after is not None
        and retry_after > MAX_SERVER_DELAY_S
        and (status in (408, 429) or status >= 500)
    ):
        # One ceiling for every wait the server asks for: past it, every worker would sleep on
        # it in silence. The run stops instead and says when to resume.
        wait = f" (the server asks to wait {retry_after:.0f}s, over the {MAX_SERVER_DELAY_S:.0f}s"
        wait += " that batchgen waits at most)"
        cls = e.DailyQuotaError if status == 429 else e.ServerWaitError
        return cls(message + wait, **kw)
    if status == 429:
        return e.RateLimitError(message, **kw)
    if status == 400 and re.search(r"service[ _]tier", message, re.IGNORECASE):
        return e.TierNotOfferedError(message, **kw)
    if status == 400 and "API_KEY_INVALID" in reasons:
        return e.AuthError(message, **kw)
    if status in (401, 403):
        return e.AuthError(message, **kw)
    if status == 404:
        return e.ModelNotFoundError(message, **kw)
    if status == 408 or status >= 500:
        return e.ServerError(message or rpc_status, **kw)
    return e.InvalidRequestError(message, **kw)


def snippet(body: bytes | bytearray) -> str:
    """The start of a body that is not JSON (an HTML error page), as one line of text."""
    text = body[:200].decode("utf-8", "replace")
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()


def redirected(headers: Any, note: str = "") -> e.RedirectError:
    """A 3xx from the API endpoint, which batchgen never follows; ``note`` says why, if wanted."""
    location = redact(str(headers.get("Location", "") or "(no Location)"))
    return e.RedirectError(
        f"the API endpoint redirected to {location}; batchgen never follows a redirect of an "
        f"API call{note}: check --base-url"
    )


def translate(exc: BaseException) -> e.APIError:
    """aiohttp and OS errors at the transport boundary, as batchgen errors."""
    msg = redact(f"{type(exc).__name__}: {exc}".rstrip(": "))
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return e.TimeoutError_(msg)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return e.BadResponseError(f"body cut off: {msg}")
    if isinstance(exc, aiohttp.ClientConnectorError):  # no connection was made at all
        return e.ConnectionError_(msg, unreached=f"{exc.host}:{exc.port}",
                                  reason=_why_unreached(exc))
    if isinstance(exc, aiohttp.ClientError | OSError):
        return e.ConnectionError_(msg)
    return e.BadResponseError(msg)


def _why_unreached(exc: aiohttp.ClientConnectorError) -> str:
    """A connection that could not be made, in a few words: what ``cannot reach HOST: ...``
    says."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return redact(f"TLS certificate not accepted ({exc.certificate_error})")
    if isinstance(exc, aiohttp.ClientSSLError):
        return redact(f"TLS handshake failed ({exc.os_error})")
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(exc.os_error,
                                                                        socket.gaierror):
        return "host name not found (DNS)"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "connection refused"
    return redact(exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__)


class Exchange:
    """What a :func:`translating` block learned of the answer before it failed.

    A block that sets :attr:`status` once the endpoint answered gets that status, and
    ``answered=True``, on any error that leaves it: the server may have acted on the request.
    """

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0


@contextlib.contextmanager
def translating() -> Iterator[Exchange]:
    """Around the I/O of one API call: a transport failure leaves as its batchgen error.

    Modelled on httpx's ``map_httpcore_exceptions``: the third-party error is raised again as
    the most specific batchgen error (:func:`translate`), chained ``from`` it; a batchgen error
    raised inside (a redirect, a body over its cap) passes through as it is.
    """
    exchange = Exchange()
    try:
        yield exchange
    except e.APIError as refused:
        _answered_by(refused, exchange)
        raise
    except TRANSPORT_ERRORS as exc:
        err = translate(exc)
        _answered_by(err, exchange)
        raise err from exc


def _answered_by(err: e.APIError, exchange: Exchange) -> None:
    if exchange.status:
        err.http_status, err.answered = exchange.status, True


async def error_body(resp: aiohttp.ClientResponse) -> bytearray:
    """The start of an error answer, for its message; the rest of it is not worth reading."""
    try:
        return await read_capped(resp, ERROR_BODY_MAX_BYTES, "the error answer")
    except e.BodyTooLargeError:
        return bytearray(b"(an error answer over 1 MiB)")
