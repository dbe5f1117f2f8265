"""Wording shared by every command's output.

Apart from messages.py so that ``batchgen status`` starts without building that module's
dataclasses (about 6 ms of a 0.15 s aim).
"""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 job``, ``2 jobs``: the count with its noun."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
