"""A batch's results, read as lines that name their job, or say why they cannot be read.

A results file can arrive short without any error: a proxy or an HTTP/1.0 hop that closes the
connection after half of it, with no Content-Length and no chunking, looks to the client like
the end of the file. So nothing here decides that a file is complete; :mod:`.collect` does, by
counting the jobs it accounted for against the batch's own ``batchStats``. This module reads
one download and says, line by line, what it found: a result, a line that is not JSON or is
over the cap (with the key it seems to carry, so the job can be charged), or a torn last line.

:class:`Reading` is the tally across one batch's downloads (jobs accounted for, lines that did
not read); :class:`Done` is what the ledger already holds from a collection cut short.

The read is bounded by the batch's request count (:func:`line_bound`): a file that never ends
is not read forever, and the "unknown key" warning is given a few times, then counted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..folder.batches import Journal
from ..folder.ledger import LedgerRecord, iter_ledger
from .wire import BatchAPI

log = logging.getLogger(__name__)

# The service has been seen to bill 60% of lines twice; four lines a request, plus some slack
# for a tiny batch, is far past anything it has sent, and stops a file that never ends.
LINES_PER_REQUEST = 4
LINES_SLACK = 64
# "unknown key" warnings given one by one, before the rest are only counted.
UNKNOWN_KEY_WARNINGS = 3

_KEY = re.compile(rb'"key"\s*:\s*"((?:[^"\\]|\\.){1,512})"')


def line_bound(request_count: int) -> int:
    return LINES_PER_REQUEST * max(request_count, 1) + LINES_SLACK


@dataclass(slots=True)
class Line:
    """One result line: ``obj`` when it reads, else ``problem`` and the key it seems to carry."""

    number: int
    obj: dict[str, Any] | None
    key: str | None
    problem: str = ""
    torn: bool = False  # the download stopped inside it: the file was cut, not the line
    response: bool = False  # an unreadable line that looks like a response (billed)


def sniff_key(raw: bytes) -> str | None:
    """The ``key`` a line that does not parse seems to carry (from its first bytes)."""
    m = _KEY.search(raw[:65536])
    if m is None:
        return None
    try:
        key = orjson.loads(b'"' + m.group(1) + b'"')
    except orjson.JSONDecodeError:
        return None
    return key if isinstance(key, str) else None


@dataclass(slots=True)
class Pass:
    """What one download held, besides the lines themselves."""

    lines: int = 0
    torn: bool = False
    bounded: bool = False  # stopped at line_bound: the file went on past any real size
    unknown_keys: int = 0


async def file_lines(api: BatchAPI, name: str, request_count: int, got: Pass
                     ) -> AsyncIterator[Line]:
    bound = line_bound(request_count)
    async for raw in api.download_lines(name):
        got.lines += 1
        n = got.lines
        if n > bound:
            got.bounded = True
            log.warning("%s: more than %d result lines for %d requests; the rest is not read",
                        name, bound, request_count)
            return
        if raw.oversized:
            yield Line(n, None, sniff_key(raw.data), problem="a result line over the size cap",
                       response=b'"response"' in raw.data)
            continue
        try:
            obj = orjson.loads(raw.data)
        except orjson.JSONDecodeError:
            if not raw.ended:
                got.torn = True  # cut off: the download ended inside this line
                yield Line(n, None, None, problem="the download ended inside a line", torn=True)
                return
            yield Line(n, None, sniff_key(raw.data), problem="a result line that is not JSON",
                       response=b'"response"' in raw.data)
            continue
        if not isinstance(obj, dict):
            yield Line(n, None, None, problem="a result line that is not an object")
            continue
        yield Line(n, obj, _key(obj.get("key")))


async def inline_lines(output: dict[str, Any]) -> AsyncIterator[Line]:
    inline = output.get("inlinedResponses") or {}
    items = inline.get("inlinedResponses") if isinstance(inline, dict) else inline
    for n, item in enumerate(items or [], 1):
        if isinstance(item, dict):
            meta = item.get("metadata") or {}
            key = meta.get("key") if isinstance(meta, dict) else None
            yield Line(n, {**item, "key": key}, _key(key))
        else:
            yield Line(n, None, None, problem="an inline response that is not an object")


def _key(key: object) -> str | None:
    return None if key is None else str(key)


class UnknownKeys:
    """The "unknown key" warning, a few times, then counted."""

    def __init__(self, batch: str) -> None:
        self.batch = batch
        self.count = 0

    def saw(self, number: int, key: object) -> None:
        self.count += 1
        if self.count <= UNKNOWN_KEY_WARNINGS:
            log.warning("%s: result line %d has an unknown key %r", self.batch, number, key)

    def summary(self) -> None:
        if self.count > UNKNOWN_KEY_WARNINGS:
            log.warning("%s: %d more result lines with unknown keys, skipped", self.batch,
                        self.count - UNKNOWN_KEY_WARNINGS)
        self.count = 0


@dataclass(slots=True)
class Done:
    """What the ledger already holds for one batch (a collection that was cut short)."""

    lines: set[int] = field(default_factory=set)
    kept: dict[str, LedgerRecord] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    responded: set[str] = field(default_factory=set)  # jobs whose line was a (billed) response


def already_recorded(journal: Journal, batch: str) -> Done:
    done = Done()
    for rec in iter_ledger(journal.run_dir / "ledger.jsonl"):
        if rec.batch != batch:
            continue
        line = rec.extra.get("batch_line")
        if isinstance(line, int):
            done.lines.add(line)
        if rec.succeeded or rec.cost_usd > 0:
            done.responded.add(rec.job_id)
        if rec.succeeded:
            done.kept.setdefault(rec.job_id, rec)
        else:
            done.failed.add(rec.job_id)
    return done


@dataclass(slots=True)
class Reading:
    """One batch's collection across its downloads: what is accounted for, what is not."""

    jobs: dict[str, dict[str, Any]]
    done: Done
    processed: int  # requests the service says it finished (succeeded + failed)
    billed: int  # of them, succeeded: each billed
    seen: set[str] = field(default_factory=set)  # jobs with a readable line
    bad: dict[int, Line] = field(default_factory=dict)  # lines naming a job that do not read
    unkeyed: int = 0  # lines of this download that do not read and name no job
    downloads: int = 0
    gone: str = ""  # why the results file cannot be had any more

    def accounted(self) -> set[str]:
        return self.seen | set(self.done.kept) | self.done.failed

    def unread(self) -> list[str]:
        accounted = self.accounted()
        return [job_id for job_id in self.jobs if job_id not in accounted]
