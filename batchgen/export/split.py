"""``--split train=0.9,test=0.1``: each job's split, by a hash of its id alone.

A job lands in the same split on every export, whatever else the folder holds, so a test image
never drifts into train when more images are made (the same hash ``--shard`` uses).

``--stratify KEY`` trades a little of that for exact proportions within each value of the key
(:class:`Stratified`): a value's rows are ranked by the same hash and cut at counts, so a label
with ten rows gets one test row at ``test=0.1``, where the hash alone could give it none or three.
Adding rows to a value can move a row next to a cut into the neighbouring split (at most one per
cut per row added); the same folder always gives the same splits.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InputError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SPAN = float(2**64)


@dataclass(frozen=True, slots=True)
class Splits:
    """Names with cumulative upper bounds in [0, 1]; one unnamed split when none was asked for."""

    names: tuple[str, ...]
    bounds: tuple[float, ...]

    @property
    def named(self) -> bool:
        return self.names != ("",)

    def of(self, job_id: str) -> str:
        if len(self.names) == 1:
            return self.names[0]
        x = int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big") / _SPAN
        for name, bound in zip(self.names, self.bounds, strict=True):
            if x < bound:
                return name
        return self.names[-1]


NO_SPLIT = Splits(("",), (1.0,))


def parse_split(spec: str | None) -> Splits:
    if not spec:
        return NO_SPLIT
    names: list[str] = []
    weights: list[float] = []
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        name = name.strip()
        if not eq or not _NAME.fullmatch(name):
            raise InputError(
                f"--split {spec!r}: expected NAME=FRACTION,..., e.g. train=0.9,test=0.1")
        if name in names:
            raise InputError(f"--split {spec!r}: {name} is named twice")
        try:
            weight = float(value)
        except ValueError:
            raise InputError(f"--split {spec!r}: {value!r} is not a number") from None
        if not 0 < weight <= 1:
            raise InputError(f"--split {spec!r}: {name}={value} must be above 0 and at most 1")
        names.append(name)
        weights.append(weight)
    total = sum(weights)
    if abs(total - 1.0) > 1e-6:
        raise InputError(f"--split {spec!r}: the fractions add up to {total:g}, not 1")
    bounds: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        bounds.append(acc)
    bounds[-1] = 1.0
    return Splits(tuple(names), tuple(bounds))


def _point(job_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big")


# Past every job's point: the cut of a split that gets no row of a value.
_END = (2**64, "")


@dataclass(frozen=True, slots=True)
class Stratified:
    """``--stratify KEY``: per value of the key, its rows in the order of a hash of their job id,
    cut at exact counts (largest remainder), so every value is split in the asked proportions.

    ``cuts[value]``: for each split after the first, the (hash, job id) of its first row.
    """

    splits: Splits
    cuts: dict[str, tuple[tuple[int, str], ...]]

    def of(self, job_id: str, value: str) -> str:
        cuts = self.cuts.get(value)
        if cuts is None:
            return self.splits.of(job_id)
        return self.splits.names[bisect.bisect_right(cuts, (_point(job_id), job_id))]


def counts(n: int, splits: Splits) -> list[int]:
    """n rows shared out by the fractions, summing to n: floors, then the largest remainders
    (ties to the split named first)."""
    lows = (0.0, *splits.bounds[:-1])
    shares = [n * (hi - lo) for lo, hi in zip(lows, splits.bounds, strict=True)]
    out = [int(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - out[i]), i))
    for i in order[: n - sum(out)]:
        out[i] += 1
    return out


def stratify(splits: Splits, items: Iterable[tuple[str, str]]) -> Stratified:
    """(job id, value of the key) for every row -> the cuts; sorted in a temporary SQLite table,
    so memory holds only the cuts (a few per value)."""
    with tempfile.TemporaryDirectory(prefix="batchgen-stratify-") as tmp:
        db = sqlite3.connect(os.path.join(tmp, "strata.sqlite"))
        try:
            for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -4096"):
                db.execute(f"PRAGMA {pragma}")
            db.execute("CREATE TABLE s (value TEXT, point BLOB, job_id TEXT)")
            # Points as 8 big-endian bytes: SQLite's integers are signed and would sort a
            # point past 2**63 first.
            db.executemany("INSERT INTO s VALUES (?, ?, ?)",
                           ((v, _point(j).to_bytes(8, "big"), j) for j, v in items))
            sizes = dict(db.execute("SELECT value, count(*) FROM s GROUP BY value"))
            cuts: dict[str, tuple[tuple[int, str], ...]] = {}
            value: str | None = None
            rank = 0
            at: list[int] = []
            found: list[tuple[int, str]] = []
            for v, point, job_id in db.execute(
                    "SELECT value, point, job_id FROM s ORDER BY value, point, job_id"):
                if v != value:
                    if value is not None:
                        cuts[value] = tuple(found + [_END] * (len(at) - len(found)))
                    value, rank, found = v, 0, []
                    per = counts(sizes[v], splits)
                    at = [sum(per[: i + 1]) for i in range(len(per) - 1)]
                while len(found) < len(at) and at[len(found)] == rank:
                    found.append((int.from_bytes(point, "big"), job_id))
                rank += 1
            if value is not None:
                cuts[value] = tuple(found + [_END] * (len(at) - len(found)))
        finally:
            db.close()
    return Stratified(splits, cuts)
