"""Providers: where each one's endpoint is, how it takes the key, and its request limit; the key
looked up in the environment; the base URL checked before anything is sent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import InputError
from .redact import redact, register_secret
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


def check_base_url(url: str, where: str) -> str:
    """The base URL as given, or an :class:`InputError` naming ``where`` (``--base-url``, or the
    manifest's ``file: base_url``) before anything is sent.

    A bad port or a missing scheme would otherwise surface as a connection error on every
    attempt, retried for half a minute. Credentials in it (``http://user:pass@host``) are
    registered as secrets, so they are scrubbed even where they appear outside a URL.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError for a port out of 0..65535 or not a number
    except ValueError as exc:
        raise InputError(f"{where}: {redact(url)!r} is not a valid URL: {exc}") from None
    for secret in (parts.username, parts.password):
        if secret:
            register_secret(secret)
            register_secret(unquote(secret))
    shown = redact(url)
    if parts.scheme not in ("http", "https"):
        raise InputError(f"{where}: {shown!r} must start with http:// or https://")
    if not parts.hostname:
        raise InputError(f"{where}: {shown!r} has no host name")
    if port == 0:
        raise InputError(f"{where}: {shown!r}: port 0 is not a port one can connect to")
    if parts.query or parts.fragment:
        raise InputError(f"{where}: {shown!r}: a base URL takes no ?query or #fragment")
    return url.strip()



def resolve_provider(value: str | None, where: Path) -> Provider:
    """The provider named (by a flag or the manifest, ``where``), anyfast when none is."""
    try:
        return Provider(value or Provider.ANYFAST.value)
    except ValueError:
        raise InputError(
            f"{where}: provider: {value!r} is not one of "
            + ", ".join(p.value for p in Provider)
        ) from None
