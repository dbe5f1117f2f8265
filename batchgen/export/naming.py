"""``--name '{meta.sku}-{animal}'`` and ``--stratify KEY``: fields of a row, named by the user.

A field is ``{COLUMN}``, any column the export writes under its exported name (``animal``,
``label``, ``seed``, ``meta_seed``), or ``{meta.KEY}``, a meta field or var by its key in the
manifest. Both are checked against the dataset's columns before anything is written, so a typo is
exit 2, not a dataset of empty names.

File names are sanitised as ids are (letters, digits, ``.``, ``_``, ``-``), and unique without
regard to case, as on macOS and Windows: the second ``MUG-1-cat`` is ``MUG-1-cat-2``. Rows come in
job id order, so the same folder always gives every image the same name. The names taken so far
are kept in a temporary SQLite table, not in memory, so a million of them cost no RAM.
"""

from __future__ import annotations

import os
import re
import sqlite3
import string
import tempfile
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..errors import InputError
from .source import Row

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
# A file name is at most 255 bytes; leave room for a collision suffix and the extension.
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class Field:
    """One ``{...}`` of a template or a ``--stratify`` key, resolved to an exported column."""

    text: str  # as the user wrote it
    column: str


def resolve(text: str, option: str, columns: dict[str, str],
            meta_columns: dict[str, tuple[str, str]]) -> Field:
    """``meta.KEY`` or a column name -> the column it is; InputError naming what there is."""
    key = text.strip()
    if key.startswith("meta.") and key[5:] in meta_columns:
        return Field(text, meta_columns[key[5:]][0])
    if key in columns:
        return Field(text, key)
    known = ", ".join(list(columns) + [f"meta.{k}" for k in meta_columns])
    raise InputError(f"{option}: no column {{{key}}} in this dataset (columns: {known})")


def _parse(template: str) -> list[tuple[str, str | None]]:
    """(literal text, field or None) pairs; ``{{`` and ``}}`` are literal braces."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputError(f"--name {template!r}: {exc} (write {{{{ for a literal brace)"
                         ) from None
    out: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parts:
        if field is not None and (spec or conversion):
            raise InputError(f"--name {template!r}: {{{field}...}}: write a field as {{NAME}}, "
                             "without a format")
        if field is not None and not field.strip():
            raise InputError(f"--name {template!r}: an empty {{}}; name a column, e.g. {{name}}")
        out.append((literal, field))
    if not any(field for _, field in out):
        raise InputError(f"--name {template!r}: no {{field}}; every image would have the same "
                         "name (e.g. --name '{name}-{job_id}')")
    return out


def check_template(template: str) -> None:
    """The template's syntax alone, before the run folder is read."""
    _parse(template)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sanitise(name: str) -> str:
    safe = _DOTS.sub(".", _UNSAFE.sub("-", name)).strip("-._")
    return safe[:MAX_NAME].rstrip("-._")


class Namer:
    """Row -> its unique file name (without extension). A context manager: the table of names
    taken lives in a temporary folder until it exits."""

    def __init__(self, template: str, columns: dict[str, str],
                 meta_columns: dict[str, tuple[str, str]]) -> None:
        self.template = template
        self._parts = [(lit, None if f is None else resolve(f, f"--name {template!r}", columns,
                                                             meta_columns))
                       for lit, f in _parse(template)]
        self._tmp = tempfile.TemporaryDirectory(prefix="batchgen-names-")
        self._db = sqlite3.connect(os.path.join(self._tmp.name, "names.sqlite"))
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -4096"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE taken (name TEXT PRIMARY KEY) WITHOUT ROWID")
        self.renamed = 0  # names that collided and got a suffix
        self.fallback = 0  # rows whose fields were all empty: named by their job id

    def __enter__(self) -> Namer:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._db.close()
        self._tmp.cleanup()

    def _claim(self, name: str) -> bool:
        cur = self._db.execute("INSERT OR IGNORE INTO taken VALUES (?)", (name.casefold(),))
        return cur.rowcount == 1

    def name(self, row: Row) -> str:
        raw = "".join(lit + ("" if f is None else _text(row.columns.get(f.column)))
                      for lit, f in self._parts)
        base = sanitise(raw)
        if not base:
            self.fallback += 1
            base = row.job_id
        if self._claim(base):
            return base
        self.renamed += 1
        n = 2
        while not self._claim(f"{base}-{n}"):
            n += 1
        return f"{base}-{n}"
