"""Keep the API key out of every message, log line, file and traceback.

A URL that carries ``?key=`` or credentials (``http://user:pass@host``) is a secret. Anything
that may hold a URL or a key passes through :func:`redact` before it leaves the process; the CLI
also installs :class:`RedactingFilter` on the root logger so a third-party library's log line is
cleaned too.
"""

from __future__ import annotations

import logging
import re

# Any query parameter whose name carries "key" or "token" (key=, api_key=, api-key=, token=...).
_KEY_PARAM = re.compile(r"(?i)([?&][\w.-]*(?:key|token)[\w.-]*=)[^&#\s\"']+")
_KEY_HEADER = re.compile(r"(?i)(x-goog-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+")
# Credentials in a URL (``http://user:pass@host``): the whole userinfo goes, since a user name
# alone can be a token too. Stops at the first character that cannot be in userinfo.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s'\"<>]+@")
REDACTED = "REDACTED"

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a key so that it is scrubbed even where it appears without a ``key=`` label."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    text = _KEY_PARAM.sub(rf"\g<1>{REDACTED}", text)
    text = _KEY_HEADER.sub(rf"\g<1>{REDACTED}", text)
    text = _USERINFO.sub(rf"\g<1>{REDACTED}@", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


# What separates the parts of a path or URL. A key is redacted from a command's own arguments
# only where it stands between these as a whole part: a short key inside a longer name
# (``jobs/fake-keyboard``) is that name, not the key, and mangling it broke the command.
# A key this long is cut out of a command's arguments wherever it appears (real keys are 39
# characters); only a shorter one can sit inside a file name by coincidence.
ALWAYS_CUT_LEN = 16
_PARTS = re.compile(r"([/\\:@?&=#;,.\s'\"]+)")


def redact_argument(arg: str) -> str:
    """One argument of a command shown to the user: URL secrets as :func:`redact` does, and a
    registered key where it is a whole part of the argument (never a piece of a longer one)."""
    arg = _KEY_PARAM.sub(rf"\g<1>{REDACTED}", arg)
    arg = _KEY_HEADER.sub(rf"\g<1>{REDACTED}", arg)
    arg = _USERINFO.sub(rf"\g<1>{REDACTED}@", arg)
    found = {s for s in _secrets if s in arg}
    if not found:
        return arg
    if any(len(s) >= ALWAYS_CUT_LEN or _PARTS.search(s) for s in found):
        # A long key inside a longer name is no coincidence; a key with a separator in it
        # cannot be told apart by parts: cut it out wherever it is.
        return redact(arg)
    return "".join(REDACTED if part in found else part for part in _PARTS.split(arg))


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def install_log_redaction() -> None:
    flt = RedactingFilter()
    root = logging.getLogger()
    root.addFilter(flt)
    for handler in root.handlers:
        handler.addFilter(flt)
