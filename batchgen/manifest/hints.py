"""Hints for spreadsheet mistakes: "did you mean", and how to fix what a spreadsheet saved.

A manifest is often typed in Excel or LibreOffice: misspelt headers (``promt``), ratios written
``16x9`` or turned into a time (``16:09:00``), semicolon-separated files, a legacy encoding.
Each problem stays an error (nothing is guessed into a request that costs money); the message
says what was probably meant.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from batchgen.spec import ASPECT_RATIOS, IMAGE_SIZES

SAVE_AS_UTF8 = (
    "save the file as UTF-8 (Excel: Save As > 'CSV UTF-8'; LibreOffice: Character set "
    "'Unicode (UTF-8)'; a text editor: encoding UTF-8)"
)
_RATIO_LIKE = re.compile(r"\s*(\d{1,2})\s*[xX×/:\-_ ]\s*0?(\d{1,2})(?::00)?\s*")
_SIZES_BY_PIXELS = {"1024": "1K", "2048": "2K", "4096": "4K", "1000": "1K", "2000": "2K",
                    "4000": "4K"}


def close_match(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` was probably meant to be, or None."""
    found = difflib.get_close_matches(word.strip().lower(), list(choices), n=1, cutoff=0.7)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` or nothing."""
    match = close_match(word, choices)
    return f" (did you mean {match}?)" if match else ""


def ratio_meant(text: str) -> str | None:
    """``16x9``, ``16/9``, ``16-9`` and Excel's ``16:09:00`` (it read 16:9 as a time) -> 16:9."""
    m = _RATIO_LIKE.fullmatch(text)
    if not m:
        return None
    ratio = f"{int(m.group(1))}:{int(m.group(2))}"
    return ratio if ratio in ASPECT_RATIOS else None


def size_meant(text: str) -> str | None:
    """``1024`` / ``1024px`` / ``2k`` -> the size it names."""
    t = text.strip().lower().removesuffix("px")
    if t in _SIZES_BY_PIXELS:
        return _SIZES_BY_PIXELS[t]
    return close_match(t.upper(), IMAGE_SIZES)


def semicolon_header(header: list[str], fields: Iterable[str]) -> bool:
    """A one-cell header that splits on ';' into field names: a semicolon-separated file."""
    if len(header) != 1 or ";" not in header[0]:
        return False
    known = set(fields)
    return any(part.strip().lower() in known for part in header[0].split(";"))
