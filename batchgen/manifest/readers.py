"""The three manifest formats, each turned into a stream of rows or located syntax problems.

CSV and JSONL are read line by line and never held whole; YAML is loaded once (it is written by
hand, so it is small) with the line of every job and key.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from batchgen.errors import Problem
from batchgen.manifest import hints
from batchgen.manifest.base import Bad
from batchgen.manifest.columns import ColumnMap, split_meta_key, typed_cell
from batchgen.manifest.fields import (
    JOB_FIELDS,
    MAX_LINE_BYTES,
    MAX_PROMPT_CHARS,
    META_PREFIX,
    PARSERS,
    Row,
)
from batchgen.manifest.yaml_reader import YamlMap, YamlSeq

_NO_LINES: Mapping[str, int] = {}
# Misspelt columns whose cells are read as the field they probably name (see csv_rows).
_ROUTED = ("prompt", "images")
_BOM = b"\xef\xbb\xbf"


def yaml_rows(doc: YamlMap | None, name: str, *, cli_model: bool) -> Iterator[Row | Problem]:
    """Each job with the file's defaults merged in; a default keeps the line it was written on."""
    if doc is None:
        return
    defaults = doc.get("defaults")
    inherited: list[tuple[str, Any, int]] = []
    if isinstance(defaults, YamlMap):
        for key, value in defaults.items():
            if key in PARSERS and key != "id":  # check_top reports the rest once
                if key == "model" and cli_model:
                    continue  # --model beats the file's defaults; a job's own model beats both
                inherited.append((key, value, defaults.key_lines[key]))
    jobs = doc.get("jobs")
    if not isinstance(jobs, YamlSeq):
        return
    for index, job in enumerate(jobs):
        if not isinstance(job, YamlMap):
            msg = "each job must be a mapping with a `prompt:`"
            yield Problem(name, jobs.item_lines[index], "", msg)
            continue
        for key, dup_line in job.dup_keys:
            yield Problem(name, dup_line, key, "set twice in this job")
        fields: dict[str, Any] = {k: v for k, v, _ in inherited}
        lines = {k: ln for k, _, ln in inherited}
        default_meta = fields.get("meta")
        fields.update(job)
        lines.update(job.key_lines)
        own_meta = job.get("meta")
        if isinstance(default_meta, YamlMap) and isinstance(own_meta, YamlMap):
            fields["meta"] = _merge_meta(default_meta, own_meta)
        yield Row(job.line, fields, lines, False)


def _merge_meta(default: YamlMap, own: YamlMap) -> YamlMap:
    """The defaults' metadata with the job's own keys over it, each key keeping its line."""
    merged = YamlMap(default)
    merged.update(own)
    merged.line = own.line
    merged.key_lines = {**default.key_lines, **own.key_lines}
    merged.dup_keys = own.dup_keys
    return merged


def capped_lines(fh: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines, None for one longer than :data:`MAX_LINE_BYTES`, whose rest is read
    and dropped in pieces: memory stays at one cap whatever the line."""
    readline = fh.readline
    while True:
        raw = readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw
            continue
        while raw and not raw.endswith(b"\n"):
            raw = readline(1 << 20)
        yield None


def too_long(name: str, lineno: int) -> Problem:
    return Problem(name, lineno, "", f"the line is longer than {MAX_LINE_BYTES >> 20} MiB, far "
                   "more than a job needs (prompts fit in "
                   f"{MAX_PROMPT_CHARS:,} characters); is this the right file?")


def jsonl_rows(path: Path, name: str, columns: ColumnMap | None = None) -> Iterator[Row | Problem]:
    loads = orjson.loads
    rename = columns.keys if columns is not None and columns.by_header else None
    with path.open("rb", buffering=1 << 16) as fh:
        lines = capped_lines(fh)
        first = next(lines, b"")
        if first and first.startswith(_BOM):
            first = first[3:]
        for lineno, raw in enumerate(itertools.chain((first,), lines), 1):
            if raw is None:
                yield too_long(name, lineno)
                continue
            if raw.isspace() or not raw:
                continue
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError as exc:
                hint = f"; {hints.SAVE_AS_UTF8}" if "UTF-8" in str(exc) else ""
                yield Problem(name, lineno, "", f"invalid JSON: {exc}{hint}")
                continue
            if type(obj) is not dict:
                yield Problem(name, lineno, "", "each line must be a JSON object")
                continue
            yield Row(lineno, rename(obj) if rename else obj, _NO_LINES, False)


def csv_rows(path: Path, name: str, mapping: ColumnMap | None = None) -> Iterator[Row | Problem]:
    """Rows keyed by column; strict quoting, with the line a broken row starts on."""
    # A quoted prompt may span lines: the field limit is the line cap, not csv's 128 KiB, so
    # the prompt's own cap (and message) applies in CSV as in JSONL and YAML.
    csv.field_size_limit(MAX_LINE_BYTES)
    with path.open("rb", buffering=1 << 16) as fh:
        reader = csv.reader(_DecodedLines(fh), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Problem(name, 1, "", f"CSV header cannot be read: {exc}")
            return
        except (_NotText, _TooLong) as exc:
            yield Problem(name, exc.line, "", str(exc))
            return
        if hints.semicolon_header(header, PARSERS):
            msg = (
                "the columns are separated by ';', not ',' (a spreadsheet's CSV in some "
                "languages): save as comma-separated CSV UTF-8, or pick ',' as the separator"
            )
            yield Problem(name, 1, "", msg)
            return
        if mapping is not None and mapping.by_header:
            header, absent = mapping.header(header)
            for column in absent:
                msg = f"no column {column!r} in the header ({', '.join(header)})"
                yield Problem(name, 1, f"--column {mapping.by_header[column]}={column}", msg)
        columns, meta_columns, header_problems, guessed, unnamed = _columns(header, name)
        meta_types = {i: kind for i, (key, kind) in list(meta_columns.items()) if kind}
        meta_keys = {i: key for i, (key, _) in meta_columns.items()}
        yield from header_problems
        # A misspelt header must not hide the rest of the file's problems (a missing reference
        # in another column): its cells are read as the field it probably names, and without any
        # prompt column each row gets a stand-in, so the rows are checked all the same. The
        # header's problem has already made the file fail; none of these jobs is ever sent.
        headless = "prompt" not in columns.values()
        taken = set(columns.values())
        routed = {i: meant for i, (_, meant) in guessed.items()
                  if meant in _ROUTED and meant not in taken}  # fmt: skip
        ncols = len(header)
        column_items, meta_items = tuple(columns.items()), tuple(meta_keys.items())
        prev = reader.line_num
        while True:
            start = prev + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                at = reader.line_num
                if "unexpected end of data" in str(exc):
                    msg = f"a quote opened in the row starting here is never closed (line {at})"
                    yield Problem(name, start, "", f"CSV syntax error: {msg}")
                    return
                yield Problem(name, start, "", f"CSV syntax error at line {at}: {exc}")
                prev = at
                continue
            except (_NotText, _TooLong) as exc:
                yield Problem(name, exc.line, "", str(exc))
                return
            prev = reader.line_num
            if not any(cells):
                continue  # blank lines, and spreadsheet rows of empty cells
            if len(cells) > ncols and not any(c.strip() for c in cells[ncols:]):
                cells = cells[:ncols]  # empty trailing cells a spreadsheet left behind
            if len(cells) != ncols:
                msg = f"row has {len(cells)} cells but the header has {ncols}"
                if prev > start:
                    msg += f"; a quoted cell runs from line {start} to {prev}: missing quote?"
                yield Problem(name, start, "", msg)
                continue
            for i in unnamed:
                if cells[i].strip():
                    msg = f"column {i + 1} has no name in the header but holds {cells[i]!r}"
                    yield Problem(name, start, "", msg)
            for i, (raw_col, meant) in guessed.items():
                # A misspelt header must not hide its column's bad values: check them as the
                # field it probably names.
                if cells[i].strip() and i not in routed:
                    try:
                        PARSERS[meant](cells[i], True)
                    except Bad as exc:
                        yield Problem(name, start, raw_col, str(exc))
            fields: dict[str, Any] = {
                col: cell for i, col in column_items if (cell := cells[i]).strip()
            }
            if routed:
                fields.update((meant, cells[i]) for i, meant in routed.items() if cells[i].strip())
            if headless and "prompt" not in fields:
                fields["prompt"] = f"(no prompt column: line {start})"
            # An empty cell is no value, as for every other column.
            meta: dict[str, Any] = {
                key: cell for i, key in meta_items if (cell := cells[i]).strip()
            }
            bad_cell = False
            for i, kind in meta_types.items():
                if cells[i].strip():
                    try:
                        meta[meta_keys[i]] = typed_cell(cells[i], kind)
                    except Bad as exc:
                        yield Problem(name, start, f"{META_PREFIX}{meta_keys[i]}", str(exc))
                        bad_cell = True
            if bad_cell:
                continue
            if prev > start:
                cells_by_column = {**fields, **{META_PREFIX + k: str(v) for k, v in meta.items()}}
                swallowed = _swallowed_row(cells_by_column, columns, ncols)
                if swallowed:
                    msg = (
                        f"the cell spans lines {start}-{prev} and contains what looks like "
                        f"a CSV row ({swallowed[1]!r}); is a closing quote missing?"
                    )
                    yield Problem(name, start, swallowed[0], msg)
                    continue
            if meta:
                fields["meta"] = meta
            yield Row(start, fields, _NO_LINES, True)


def _columns(
    header: list[str], name: str
) -> tuple[
    dict[int, str],
    dict[int, tuple[str, str | None]],
    list[Problem],
    dict[int, tuple[str, str]],
    list[int],
]:
    """Column index -> field for the known columns, index -> (key, type or None) for the
    ``meta.<key>[:type]`` columns, the header's problems, the misspelt columns (index ->
    (header, the field it probably names)), and the unnamed columns."""
    columns: dict[int, str] = {}
    meta: dict[int, tuple[str, str | None]] = {}
    problems: list[Problem] = []
    guessed: dict[int, tuple[str, str]] = {}
    unnamed: list[int] = []
    for index, raw in enumerate(header):
        col = raw.strip().lower()
        if col.startswith(META_PREFIX):
            key, kind = split_meta_key(raw.strip()[len(META_PREFIX) :].strip())
            if not key:
                msg = f"a metadata column needs a name after {META_PREFIX!r}, e.g. meta.sku"
                problems.append(Problem(name, 1, raw.strip(), msg))
            elif key in (k for k, _ in meta.values()):
                problems.append(Problem(name, 1, f"{META_PREFIX}{key}", "column appears twice"))
            else:
                meta[index] = (key, kind)
        elif col == "meta":
            msg = "CSV metadata goes in columns named meta.<name>, e.g. meta.sku"
            problems.append(Problem(name, 1, col, msg))
        elif col in columns.values():
            problems.append(Problem(name, 1, col, "column appears twice"))
        elif col in PARSERS:
            columns[index] = col
        elif not col:
            # Spreadsheets save empty trailing columns; only a value under one is a problem.
            unnamed.append(index)
        else:
            meant = hints.close_match(col, JOB_FIELDS)
            if meant is not None and meant not in ("id", "meta"):
                guessed[index] = (raw.strip(), meant)
            known = ", ".join(f for f in JOB_FIELDS if f != "meta")
            hint = f"; did you mean {meant}?" if meant and meant != "meta" else ""
            msg = f"unknown column{hint} (known: {known}); your own columns are named meta.<name>"
            problems.append(Problem(name, 1, raw.strip(), msg))
    # A misspelt prompt column already says "did you mean prompt?".
    misspelt = any(hints.close_match(c, JOB_FIELDS) == "prompt" for c in header)
    if "prompt" not in columns.values() and not misspelt:
        problems.append(Problem(name, 1, "prompt", "required column missing"))
    return columns, meta, problems, guessed, unnamed


def _swallowed_row(
    fields: dict[str, str], columns: dict[int, str], ncols: int
) -> tuple[str, str] | None:
    """(column, line) for a line inside a multi-line cell that parses as a whole row.

    That is the mark of an unclosed quote. Multi-line prompts are legitimate, so only a line with
    the header's cell count whose other cells all hold valid values for their columns counts.
    """
    if ncols < 2:
        return None
    for column, value in fields.items():
        for line in value.splitlines()[1:]:
            cells = next(csv.reader([line]), [])
            if len(cells) != ncols:
                continue
            others = [(columns[i], c) for i, c in enumerate(cells) if i in columns and c.strip()]
            if any(col != "prompt" for col, _ in others) and all(
                col == "prompt" or _valid(col, c) for col, c in others
            ):
                return column, line
    return None


def _valid(col: str, value: str) -> bool:
    try:
        PARSERS[col](value, True)
    except Bad:
        return False
    return True


class _NotText(ValueError):
    def __init__(self, line: int, exc: UnicodeDecodeError) -> None:
        bad = exc.object[exc.start]
        super().__init__(
            f"not UTF-8 text: byte {bad:#04x} at column {exc.start + 1}; {hints.SAVE_AS_UTF8}"
        )
        self.line = line


class _TooLong(ValueError):
    def __init__(self, line: int) -> None:
        super().__init__(too_long("", line).message)
        self.line = line


class _DecodedLines:
    """Decode line by line, so a bad byte is reported on its own line and not a chunk earlier."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._line = 0

    def __iter__(self) -> Iterator[str]:
        # capped_lines' reading written into this loop, not a generator under it: csv pulls a
        # million lines through here.
        readline = self._fh.readline
        cap = MAX_LINE_BYTES
        line = 0
        while True:
            raw = readline(cap + 1)
            if not raw:
                return
            line += 1
            self._line = line
            if len(raw) > cap and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = readline(1 << 20)  # the rest of the long line, read and dropped
                raise _TooLong(line)
            if line == 1 and raw.startswith(_BOM):
                raw = raw[3:]  # Excel writes one
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _NotText(line, exc) from None
