"""What the three formats' writers share: one writer per split, fed rows in job id order."""

from __future__ import annotations

from .fs import Target
from .source import Row


class MissingImage(Exception):
    """The ledger names an image that is not in the run folder (deleted by hand)."""


class Writer:
    def __init__(self, target: Target, prefix: str, columns: list[str]) -> None:
        self.target = target
        self.prefix = prefix  # "" or "train/"
        self.columns = columns
        self.rows = 0
        self.files = 0
        self.placed: dict[str, int] = {}

    def add(self, row: Row) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def read_image(row: Row) -> bytes | None:
    """The image's bytes; None for a row without one (a failed job, with --include-failed)."""
    if row.data is not None:
        return row.data
    if row.image is None:
        if row.columns.get("status", "succeeded") == "succeeded":
            raise MissingImage(row.job_id)
        return None
    try:
        with open(row.image, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise MissingImage(row.job_id) from None
