"""What every field rule shares: the exceptions a bad value raises, and the simplest readers.

Apart from :mod:`.fields` so that :mod:`.extras` (the request's optional fields) can use them
while :mod:`.fields` lists its parsers.
"""

from __future__ import annotations


class Bad(ValueError):
    """A field value that breaks a rule; the message reads after 'file:line: field: '."""


class BadMeta(Bad):
    """A problem with one ``meta`` key: reported as field ``meta.<key>``, on the key's line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "a string" if isinstance(value, str) else type(value).__name__


def string_of(value: object) -> str:
    if not isinstance(value, str):
        raise Bad(f"must be a string, not {kind_of(value)}")
    return value


_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def parse_bool(value: object, text: bool) -> bool:
    if text and isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
        return _BOOL_TEXT[value.strip().lower()]
    if isinstance(value, bool):
        return value
    raise Bad(f"must be true or false, not {value!r}")
