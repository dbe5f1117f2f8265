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
