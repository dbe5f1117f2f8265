"""What the review page asks of a :class:`~.index.FolderIndex`: filtered pages, facets, a grid
grouped by two fields, one job in full. Pure functions of the index and the query string, so
the filtering happens here, on the server, and the page only ever holds one screen of items.

A filter is the query string: ``status``, ``verdict`` (accepted, rejected, unreviewed), ``kind``
(a failure's error kind), ``q`` (words of the prompt or id), and ``var.NAME`` / ``meta.NAME``
for one value of a var or a meta field. A grid is ``rows`` and ``cols``, each ``var.NAME`` or
``meta.NAME`` (or ``status``, ``verdict``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from .index import FolderIndex, JobRow, Status

# Distinct values a facet lists, rows or columns a grid shows: past these a field is more an id
# than a category, and a menu of 100,000 entries helps nobody.
MAX_FACET_VALUES = 200
MAX_GRID_SIDE = 60
MAX_PAGE = 500
UNREVIEWED = "unreviewed"
NONE = "(none)"  # the value of a field a job does not have


class QueryError(ValueError):
    """A query the page should not have sent (a 400)."""


def value_text(value: Any) -> str:
    """A var or meta value as the filters compare it: strings as they are, others as JSON."""
    if value is None:
        return NONE
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def field_getter(index: FolderIndex, name: str) -> Callable[[JobRow], str]:
    """``var.X``, ``meta.X``, ``status``, ``verdict`` or ``kind`` -> a job's value of it."""
    if name.startswith("var."):
        key = name[4:]
        return lambda row: row.vars.get(key, NONE)
    if name.startswith("meta."):
        key = name[5:]
        return lambda row: value_text(row.meta.get(key)) if key in row.meta else NONE
    if name == "status":
        return lambda row: row.status
    if name == "verdict":
        return lambda row: verdict_of(index, row)
    if name == "kind":
        return lambda row: row.kind or NONE
    raise QueryError(f"{name!r} is not a field (var.NAME, meta.NAME, status, verdict, kind)")


def verdict_of(index: FolderIndex, row: JobRow) -> str:
    if row.status != Status.SUCCEEDED and row.status != Status.SUPERSEDED:
        return NONE
    review = index.verdict(row)
    return review.verdict.value if review is not None else UNREVIEWED


@dataclass(frozen=True, slots=True)
class Filter:
    """The filter part of a query, parsed once."""

    equal: tuple[tuple[str, str], ...]  # (field, value) pairs, all must hold
    words: tuple[str, ...]

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filter:
        equal = []
        for key, value in query.items():
            named = key in ("status", "verdict", "kind") or key.startswith(("var.", "meta."))
            if named and value != "":
                equal.append((key, value))
        words = tuple(w for w in query.get("q", "").lower().split() if w)
        return cls(tuple(sorted(equal)), words)

    def key(self) -> tuple[Any, ...]:
        return (self.equal, self.words)

    def apply(self, index: FolderIndex) -> list[JobRow]:
        rows = index.ordered
        for name, value in self.equal:
            get = field_getter(index, name)
            rows = [r for r in rows if get(r) == value]
        for word in self.words:
            rows = [r for r in rows if word in r.prompt.lower() or word in r.job_id]
        return rows


class Selections:
    """Filtered lists cached per index version: paging through a filter filters once."""

    def __init__(self, index: FolderIndex, size: int = 16) -> None:
        self.index = index
        self.size = size
        self._cache: dict[tuple[Any, ...], list[JobRow]] = {}
        self._version = -1
        self._lock = threading.Lock()

    def rows(self, flt: Filter) -> list[JobRow]:
        with self._lock:  # facets and grids ask from a thread
            if self._version != self.index.version:
                self._cache.clear()
                self._version = self.index.version
            key = flt.key()
            found = self._cache.get(key)
            if found is None:
                if len(self._cache) >= self.size:
                    self._cache.pop(next(iter(self._cache)))
                found = self._cache[key] = flt.apply(self.index)
            return found


def int_arg(query: Mapping[str, str], name: str, default: int, most: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name}: {raw!r} is not a whole number") from None
    if value < 0:
        raise QueryError(f"{name}: {value} is negative")
    return min(value, most)


def item(index: FolderIndex, row: JobRow) -> dict[str, Any]:
    """A job as a card: short keys, one per card of a page of hundreds."""
    d: dict[str, Any] = {"id": row.job_id, "s": row.status}
    if row.output:
        d["th"] = f"thumb/{quote(row.job_id)}?s={row.sha256[:12]}"
        d["sha"] = row.sha256
        review = index.verdict(row)
        d["v"] = review.verdict.value if review is not None else UNREVIEWED
        if review is not None and review.note:
            d["vn"] = review.note
    if row.kind:
        d["k"] = row.kind
    if row.name:
        d["nm"] = row.name
    if row.vars:
        d["lb"] = " · ".join(row.vars.values())
    return d


def page(index: FolderIndex, sel: Selections, query: Mapping[str, str]) -> dict[str, Any]:
    rows = sel.rows(Filter.parse(query))
    offset = int_arg(query, "offset", 0, 1 << 40)
    limit = int_arg(query, "limit", 100, MAX_PAGE)
    return {
        "version": index.version,
        "total": len(rows),
        "offset": offset,
        "items": [item(index, r) for r in rows[offset:offset + limit]],
    }


def position(sel: Selections, query: Mapping[str, str], job_id: str) -> int:
    """Where ``job_id`` is in the filtered list (-1: not in it)."""
    for i, row in enumerate(sel.rows(Filter.parse(query))):
        if row.job_id == job_id:
            return i
    return -1


def facets(index: FolderIndex, sel: Selections, query: Mapping[str, str]) -> dict[str, Any]:
    """Per field, its values among the jobs the filter leaves, with counts (most first)."""
    rows = sel.rows(Filter.parse(query))
    names = ["status", "verdict", "kind"] + [f"var.{k}" for k in index.var_keys] \
        + [f"meta.{k}" for k in index.meta_keys]
    out: dict[str, Any] = {}
    for name in names:
        counts = Counter(map(field_getter(index, name), rows))  # counted in C
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out[name] = {"values": ranked[:MAX_FACET_VALUES],
                     "more": max(len(ranked) - MAX_FACET_VALUES, 0)}
    return {"version": index.version, "fields": out}


def grid(index: FolderIndex, sel: Selections, query: Mapping[str, str]) -> dict[str, Any]:
    """The jobs the filter leaves in a table: rows one field's values, columns another's; each
    cell its count and its first ``per`` items."""
    rows_field, cols_field = query.get("rows", ""), query.get("cols", "")
    if not rows_field or not cols_field:
        raise QueryError("a grid needs rows and cols (var.NAME or meta.NAME)")
    get_r, get_c = field_getter(index, rows_field), field_getter(index, cols_field)
    per = int_arg(query, "per", 4, 50)
    cells: dict[tuple[str, str], list[JobRow]] = {}
    counts: dict[tuple[str, str], int] = {}
    row_values: dict[str, None] = {}
    col_values: dict[str, None] = {}
    for row in sel.rows(Filter.parse(query)):
        r, c = get_r(row), get_c(row)
        row_values.setdefault(r)
        col_values.setdefault(c)
        key = (r, c)
        counts[key] = counts.get(key, 0) + 1
        cell = cells.setdefault(key, [])
        if len(cell) < per:
            cell.append(row)
    rv, cv = list(row_values)[:MAX_GRID_SIDE], list(col_values)[:MAX_GRID_SIDE]
    return {
        "version": index.version,
        "rows": rv, "cols": cv,
        "more_rows": max(len(row_values) - len(rv), 0),
        "more_cols": max(len(col_values) - len(cv), 0),
        "cells": [[{"n": counts.get((r, c), 0),
                    "items": [item(index, x) for x in cells.get((r, c), [])]} for c in cv]
                  for r in rv],
    }


def job(index: FolderIndex, row: JobRow) -> dict[str, Any]:
    """One job in full for the large view: its last ledger line, every earlier one (attempts
    and redos: the lineage of its image), its reviews, and what it cost in all."""
    history = index.history(row)
    last = history[-1] if history else {}
    review = index.verdict(row)
    return {
        **item(index, row),
        "im": f"image/{quote(row.job_id)}?s={row.sha256[:12]}" if row.output else None,
        "prompt": last.get("prompt", row.prompt),
        "vars": row.vars,
        "meta": row.meta,
        "text": last.get("text"),
        "model": last.get("model"),
        "size": last.get("image_size"),
        "ratio": last.get("aspect_ratio"),
        "seed": last.get("seed"),
        "wh": [last.get("width"), last.get("height")] if last.get("width") else None,
        "source": last.get("source"),
        "references": last.get("references") or [],
        "error": last.get("error"),
        "cost_usd": round(row.cost_usd, 6),
        "note": review.note if review is not None else "",
        "lineage": [
            {"at": d.get("finished_at"), "status": d.get("status"),
             "sha256": d.get("sha256"), "cost_usd": d.get("cost_usd"),
             "attempts": d.get("attempts"), "mode": d.get("mode"),
             "replaces": d.get("replaces"), "note": d.get("note"),
             "error": (d.get("error") or {}).get("kind")}
            for d in history
        ],
        "reviews": [{"sha256": r.sha256, "verdict": r.verdict.value, "note": r.note, "at": r.at}
                    for r in index.reviews_of(row.job_id)],
        # Chains: the images this one was made from (is that image still the parent's?), and
        # the jobs made from this one.
        "parents": [
            {**p, "current": (parent := index.rows.get(p["job_id"])) is not None
             and parent.sha256 == p["sha256"]}
            for p in row.parents
        ],
        "children": sorted(index.children.get(row.job_id, ())),
    }
