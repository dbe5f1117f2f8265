"""``--split train=0.9,test=0.1``: each job's split, by a hash of its id alone.

A job lands in the same split on every export, whatever else the folder holds, so a test image
never drifts into train when more images are made (the same hash ``--shard`` uses).
"""

from __future__ import annotations

import hashlib
import re
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
