"""Settings: frozen, keyword-only, built once by the CLI and handed down the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .providers import PROVIDERS, MiB
from .redact import redact
from .spec import Provider


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    provider: Provider = Provider.ANYFAST
    base_url: str = PROVIDERS[Provider.ANYFAST].base_url
    api_key: str
    timeout_s: float = 300.0
    connections: int = 8
    max_request_bytes: int = 20 * MiB
    # URL references are fetched from hosts that are not the API: they get their own, shorter
    # timeout, so a hanging one fails its job as a reference problem instead of holding a slot
    # for the API's --timeout (which must allow for minutes of image generation).
    reference_timeout_s: float = 60.0

    def __repr__(self) -> str:  # the key must never reach a log line through a repr
        return (
            f"ClientSettings(provider={self.provider.value!r}, base_url={redact(self.base_url)!r}, "
            f"api_key='REDACTED', timeout_s={self.timeout_s}, connections={self.connections})"
        )

    @property
    def key_in_query(self) -> bool:
        return PROVIDERS[self.provider].key_in_query


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    out_dir: Path
    concurrency: int = 8
    max_attempts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    rpm: float | None = None
    ipm: float | None = None
    rate_window_s: float = 60.0
    burst: int = 1  # pacing.DEFAULT_BURST: requests that may leave at once after an idle spell
    retry_blocked: int = 0
    budget_usd: float | None = None
    shard: tuple[int, int] | None = None
    grace_s: float = 300.0  # how long Ctrl-C waits for requests in flight (they are paid for)
    progress: bool = True
