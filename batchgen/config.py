"""Settings: frozen, keyword-only, built once by the CLI and handed down the pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .spec import Provider

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    base_url: str
    key_in_query: bool
    key_env: tuple[str, ...]
    max_request_bytes: int


PROVIDERS: dict[Provider, ProviderInfo] = {
    # Anyfast takes the key only as ?key=, and may still enforce the old 20 MB request limit.
    Provider.ANYFAST: ProviderInfo("https://www.anyfast.ai", True, ("ANYFAST_API_KEY",), 20 * MiB),
    Provider.GOOGLE: ProviderInfo(
        "https://generativelanguage.googleapis.com",
        False,
        ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        100 * MiB,
    ),
}
KEY_OVERRIDE_ENV = "BATCHGEN_API_KEY"


def key_sources(provider: Provider) -> tuple[str, ...]:
    return (KEY_OVERRIDE_ENV, *PROVIDERS[provider].key_env)


def resolve_key(provider: Provider, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    for name in key_sources(provider):
        value = env.get(name, "").strip()
        if value:
            return value
    hint = ""
    for other, info in PROVIDERS.items():
        found = [name for name in info.key_env if env.get(name, "").strip()]
        if other is not provider and found:
            # The key is there, for the other provider: say so, and how to use it.
            hint = (
                f"; {found[0]} is set, which is a key for provider {other.value}: "
                f"to use it, add --provider {other.value}"
            )
            break
    raise InputError(
        f"no API key for provider {provider.value}: set "
        + " or ".join(key_sources(provider))
        + (hint or " (or use --fake to run against the built-in fake server)")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    provider: Provider = Provider.ANYFAST
    base_url: str = PROVIDERS[Provider.ANYFAST].base_url
    api_key: str
    timeout_s: float = 300.0
    connections: int = 8
    max_request_bytes: int = 20 * MiB

    def __repr__(self) -> str:  # the key must never reach a log line through a repr
        return (
            f"ClientSettings(provider={self.provider.value!r}, base_url={self.base_url!r}, "
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
    retry_blocked: int = 0
    budget_usd: float | None = None
    shard: tuple[int, int] | None = None
    grace_s: float = 300.0  # how long Ctrl-C waits for requests in flight (they are paid for)
    progress: bool = True
