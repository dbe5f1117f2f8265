"""Hints for spreadsheet mistakes: "did you mean", and how to fix what a spreadsheet saved.

A manifest is often typed in Excel or LibreOffice: misspelt headers (``promt``), ratios written
``16x9`` or turned into a time (``16:09:00``), semicolon-separated files, a legacy encoding.
Each problem stays an error (nothing is guessed into a request that costs money); the message
says what was probably meant.
"""

from __future__ import annotations

import difflib
import itertools
import os
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


# A folder with more entries than this is not read for a near match: a typo in one row must not
# list a folder of a million images.
MAX_LISTED = 10_000


def near_file(source: str, path: str, listings: dict[str, list[str] | None]) -> str | None:
    """The file a missing reference probably meant, written as the manifest writes it:
    ``refs/mgu.png`` -> ``refs/mug.png``, ``ref/mug.png`` -> ``refs/mug.png``, ``Mug.PNG`` ->
    ``mug.png``. ``path`` is where ``source`` resolved to; ``listings`` caches folders read."""
    written_name = os.path.basename(source)
    written_dir = source[: len(source) - len(written_name)]
    folder, name = os.path.split(path)
    match = _near_name(name, _listing(folder, listings), folder)
    if match is not None:
        return written_dir + match
    # The folder misspelt instead: look for the file in the parent's folder of the nearest name.
    tail = written_dir.rstrip("/" + os.sep)
    parent, sub = os.path.split(folder)
    if not tail or os.path.basename(tail) != sub or os.path.isdir(folder):
        return None
    near_dir = _near_name(sub, _listing(parent, listings), parent, want_dir=True)
    if near_dir is None or not os.path.isfile(os.path.join(parent, near_dir, name)):
        return None
    return tail[: len(tail) - len(sub)] + near_dir + written_dir[len(tail):] + name


def _listing(folder: str, listings: dict[str, list[str] | None]) -> list[str]:
    if folder not in listings:
        try:
            with os.scandir(folder) as entries:
                names = list(itertools.islice((e.name for e in entries), MAX_LISTED + 1))
        except OSError:
            names = []
        listings[folder] = names if len(names) <= MAX_LISTED else None
    return listings[folder] or []


def _near_name(name: str, names: list[str], folder: str, *, want_dir: bool = False) -> str | None:
    if not names:
        return None
    by_lower: dict[str, str] = {}
    for n in names:
        by_lower.setdefault(n.lower(), n)
    found = by_lower.get(name.lower())
    if found is None:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
        found = by_lower[close[0]] if close else None
    if found is None:
        return None
    full = os.path.join(folder, found)
    return found if (os.path.isdir(full) if want_dir else os.path.isfile(full)) else None
