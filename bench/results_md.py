"""One bench's section of bench/RESULTS.md, replaced in place between its markers."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(section: str, begin: str, end: str, results: Path = RESULTS) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) into ``results``."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    results.write_text(text)
