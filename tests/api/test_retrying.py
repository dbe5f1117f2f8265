"""What is retried and how long to wait (batchgen/api/retrying.py)."""

from __future__ import annotations

from batchgen import errors as e
from batchgen.api.retrying import RetryPolicy, backoff_delay, should_retry


def test_should_retry_table() -> None:
    policy = RetryPolicy(max_attempts=3, retry_blocked=1)
    kw = {"stochastic_failures": 0, "policy": policy}
    assert should_retry(e.ServerError("x"), attempt=1, **kw)  # type: ignore[arg-type]
    assert not should_retry(e.ServerError("x"), attempt=3, **kw)  # type: ignore[arg-type]
    assert not should_retry(e.InvalidRequestError("x"), attempt=1, **kw)  # type: ignore[arg-type]
    assert not should_retry(e.AuthError("x"), attempt=1, **kw)  # type: ignore[arg-type]
    assert should_retry(e.BlockedError("x"), attempt=1, stochastic_failures=1, policy=policy)
    assert not should_retry(e.BlockedError("x"), attempt=2, stochastic_failures=2, policy=policy)
    assert not should_retry(e.BlockedError("x"), attempt=1, stochastic_failures=1,
                            policy=RetryPolicy())
    assert backoff_delay(e.RateLimitError("x", retry_after=2.0), attempt=1, policy=policy) >= 2.0
    assert 4.0 <= backoff_delay(e.ServerError("x"), attempt=3, policy=policy) <= 5.0


def _refused() -> e.ConnectionError_:
    return e.ConnectionError_("refused", unreached="127.0.0.1:1", reason="connection refused")


def test_a_host_that_never_answered_stops_after_the_first_refusals() -> None:
    from batchgen.api.retrying import UNREACHABLE_AFTER, Reachability

    reach = Reachability()
    found = [reach.after(_refused()) for _ in range(UNREACHABLE_AFTER)]
    assert found[:-1] == [None] * (UNREACHABLE_AFTER - 1)
    stop = found[-1]
    assert isinstance(stop, e.UnreachableError) and isinstance(stop, e.FatalError)
    assert str(stop) == "cannot reach 127.0.0.1:1: connection refused"
    # A dropped connection (the host was reached) or a timeout is no such sign.
    other = Reachability()
    for _ in range(5):
        assert other.after(e.ConnectionError_("reset by peer")) is None
        assert other.after(e.TimeoutError_("slow")) is None


def test_once_the_host_has_answered_refusals_are_transient() -> None:
    from batchgen.api.retrying import Reachability

    reach = Reachability()
    assert reach.after(e.ServerError("503", http_status=503, answered=True)) is None
    assert all(reach.after(_refused()) is None for _ in range(10))
    heard = Reachability()
    heard.heard()
    assert all(heard.after(_refused()) is None for _ in range(10))


def test_connections_that_cannot_be_made_are_translated_with_their_host_and_reason() -> None:
    import asyncio

    import aiohttp

    from batchgen.api.translate import translate
    from batchgen.fake import FakeConfig, ThreadedFakeServer

    async def failure(url: str) -> e.APIError:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)):
                    raise AssertionError("connected")
            except aiohttp.ClientError as exc:
                return translate(exc)

    refused = asyncio.run(failure("http://127.0.0.1:1/"))
    assert isinstance(refused, e.ConnectionError_)
    assert (refused.unreached, refused.reason) == ("127.0.0.1:1", "connection refused")
    with ThreadedFakeServer(FakeConfig(api_key="k")) as srv:  # TLS to a plain-HTTP port
        tls = asyncio.run(failure(srv.url.replace("http://", "https://")))
    assert isinstance(tls, e.ConnectionError_) and tls.reason is not None
    assert tls.reason.startswith("TLS handshake failed")
