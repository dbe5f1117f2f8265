"""Spreadsheets as they are: ``--column FIELD=HEADER``, ``--set FIELD=VALUE`` and typed
metadata columns (``meta.weight:float``).

A header is mapped, never guessed: a column that is neither a field nor mapped to one is still
an error, so a misspelt ``promt`` is never silently ignored.
"""

from __future__ import annotations

from typing import Any

from batchgen.errors import Problem
from batchgen.manifest import hints
from batchgen.manifest.base import Bad
from batchgen.manifest.fields import JOB_FIELDS, META_PREFIX, PARSERS, parse_meta

# `meta.<key>:<type>`: how a CSV cell of that column is read. Text by default, so `00123` keeps
# its zeros; the names are the ones BigQuery's `bq load` schema strings use, lower-cased.
META_TYPES = ("string", "int", "float", "bool")
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
# Fields that are per row by nature: a default would make every row the same job.
_NO_DEFAULT = ("id", "prompt", "vars", "meta")


def split_meta_key(key: str) -> tuple[str, str | None]:
    """``weight:float`` -> (``weight``, ``float``); a suffix that is no type stays in the key."""
    name, sep, kind = key.rpartition(":")
    if sep and kind.strip().lower() in META_TYPES and name.strip():
        return name.strip(), kind.strip().lower()
    return key, None


def typed_cell(cell: str, kind: str) -> Any:
    """A CSV cell read as ``kind``; raises :class:`Bad` naming the type."""
    text = cell.strip()
    if kind == "string":
        return text
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise Bad(f"must be {'a whole number' if kind == 'int' else 'a number'} "
                  f"(the column says :{kind}), not {text!r}") from None
    if text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    raise Bad(f"must be true or false (the column says :bool), not {text!r}")


def _field_problem(field: str) -> str | None:
    if field.startswith(META_PREFIX) and field[len(META_PREFIX) :].strip():
        return None
    if field in PARSERS and field != "meta":
        return None
    meant = hints.close_match(field, JOB_FIELDS)
    hint = f"did you mean {meant}? " if meant else ""
    return f"{field!r} is not a field ({hint}known: {', '.join(JOB_FIELDS)}, or meta.<name>)"


class ColumnMap:
    """``--column FIELD=HEADER`` pairs: a CSV header (or JSONL key) -> the field it fills."""

    def __init__(self, by_header: dict[str, str]) -> None:
        self.by_header = by_header

    @classmethod
    def parse(cls, pairs: tuple[tuple[str, str], ...], problems: list[Problem]) -> ColumnMap:
        by_header: dict[str, str] = {}
        for field, header in pairs:
            field, header = field.strip(), header.strip()
            why = _field_problem(field)
            if why is None and not header:
                why = "needs a column name after '='"
            if why is None and header in by_header:
                why = f"column {header!r} is mapped twice"
            if why is not None:
                problems.append(Problem("", 0, f"--column {field}={header}", why))
                continue
            by_header[header] = field
        return cls(by_header)

    def header(self, cells: list[str]) -> tuple[list[str], list[str]]:
        """The header with mapped names replaced, and the mapped headers it does not have."""
        present = {c.strip() for c in cells}
        missing = [h for h in self.by_header if h not in present]
        return [self.by_header.get(c.strip(), c) for c in cells], missing

    def keys(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A JSONL object with mapped keys renamed (``meta.<key>`` keys go under ``meta``)."""
        if not self.by_header:
            return obj
        out: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for key, value in obj.items():
            field = self.by_header.get(key, key)
            if field.startswith(META_PREFIX) and key in self.by_header:
                meta[split_meta_key(field[len(META_PREFIX) :])[0]] = value
            else:
                out[field] = value
        if meta:
            own = out.get("meta")
            out["meta"] = {**meta, **own} if isinstance(own, dict) else meta
        return out


def parse_set(pairs: tuple[tuple[str, str], ...], problems: list[Problem]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` pairs, each parsed as that field's own value (as a CSV cell)."""
    out: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for field, value in pairs:
        field = field.strip()
        where = f"--set {field}"
        why = _field_problem(field)
        if why is None and field in _NO_DEFAULT:
            why = "is per row and cannot be set for every row"
        if why is not None:
            problems.append(Problem("", 0, where, why))
            continue
        try:
            if field.startswith(META_PREFIX):
                key, kind = split_meta_key(field[len(META_PREFIX) :])
                meta[key] = typed_cell(value, kind or "string")
            else:
                out[field] = PARSERS[field](value, True)
        except Bad as exc:
            problems.append(Problem("", 0, where, str(exc)))
    if meta:
        try:
            out["meta"] = parse_meta(meta, False)
        except Bad as exc:
            problems.append(Problem("", 0, "--set meta", str(exc)))
    return out
