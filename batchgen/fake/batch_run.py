"""Running a fake batch: its states over time, and its results, built line by line.

A batch reads PENDING for the first quarter of ``batch_seconds``, RUNNING until they are up, then
its lines are "generated" with the live path's answer builder (so each ``response`` is what
``generateContent`` would answer, thought parts and usageMetadata included) and billed at half
price into the batch counters. The work starts on a timer at ``batch_seconds``, so it happens
whether or not anyone polls; a read of a due batch starts it too and waits a moment for it, so
small batches read as done on time while a 100,000-line batch reads RUNNING until its file is
complete. Results go to disk line by line through a bounded shuffle window: they come back out
of order, as the service's do, and no batch's results are ever held whole in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .answers import TEXT_ONLY, answer, blocked, empty_answer, fault_error, usage
from .downloads import garble_line
from .faults import FakeConfig
from .file_store import FileStore
from .host import BatchHost
from .validate import ApiError, ParsedRequest, parse_request_obj

logger = logging.getLogger(__name__)

BATCH_PRICE_FACTOR = 0.5
# Lines generated between yields to the loop: a 100k-line batch must not stall other requests.
_YIELD_EVERY = 200
# How long a read of a batch whose time is up waits for its results before answering RUNNING:
# long enough for a small batch to read as done on time, short enough that a client polling
# 100 batches that are all being written is not held up for long on each.
_SETTLE_WAIT_S = 0.25
# The shuffle window: lines held back and emitted in random order, capped in count and bytes.
_WINDOW_LINES = 64
_WINDOW_BYTES = 8 * 1024 * 1024
# Retryable per-line errors, served in turn: gRPC codes and the HTTP-style numbers both occur.
_GRPC_CODES = {400: 3, 403: 7, 404: 5, 413: 3}
_LINE_ERRORS: tuple[tuple[int, str], ...] = (
    (8, "Resource has been exhausted (e.g. check quota)."),
    (14, "The service is currently unavailable."),
    (429, "Resource has been exhausted (e.g. check quota)."),
    (503, "The model is overloaded. Please try again later."),
)


class BatchState(str, enum.Enum):
    PENDING = "BATCH_STATE_PENDING"
    RUNNING = "BATCH_STATE_RUNNING"
    SUCCEEDED = "BATCH_STATE_SUCCEEDED"
    FAILED = "BATCH_STATE_FAILED"
    CANCELLED = "BATCH_STATE_CANCELLED"
    EXPIRED = "BATCH_STATE_EXPIRED"


@dataclass
class Batch:
    batch_id: str
    model: str
    display_name: str
    priority: int
    seq: int
    created: float  # wall clock, for timestamps
    started: float  # monotonic, for the state machine
    request_count: int
    input_name: str | None  # "files/ID" for file input
    input_path: Path | None  # the batch's own hard link to the input file
    inline: list[dict[str, Any]] | None
    # The batch knobs as they were at create time.
    seconds: float
    duplicate_rate: float
    expire: bool
    fail: bool
    line_error_rate: float
    output_lag: int = 0  # reads of the finished batch that still show no output
    garbled_lines: int = 0  # result lines still to write unreadable (billed all the same)
    oversized_lines: int = 0  # responses still to write over 256 MiB
    final: BatchState | None = None
    ended: float | None = None
    succeeded: int = 0
    failed: int = 0
    output_file: str | None = None
    inline_out: bytes | None = None  # the encoded {"inlinedResponses": {...}} object
    error: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"batches/{self.batch_id}"

    def state(self, now: float) -> BatchState:
        if self.final is not None:
            return self.final
        if now - self.started < self.seconds * 0.25:
            return BatchState.PENDING
        return BatchState.RUNNING

    def due(self, now: float) -> bool:
        return self.final is None and now - self.started >= self.seconds


class _Shuffler:
    """Writes lines in a locally shuffled order, holding at most a small window of them."""

    def __init__(self, out: IO[bytes], rng: random.Random) -> None:
        self.out = out
        self.rng = rng
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.hasher = hashlib.sha256()
        self.size = 0

    def push(self, line: bytes) -> None:
        self.held.append(line)
        self.held_bytes += len(line)
        while len(self.held) > _WINDOW_LINES or (
            self.held_bytes > _WINDOW_BYTES and len(self.held) > 1
        ):
            self._emit(self.rng.randrange(len(self.held)))

    def _emit(self, i: int) -> None:
        held = self.held
        held[i], held[-1] = held[-1], held[i]
        line = held.pop()
        self.held_bytes -= len(line)
        self.out.write(line)
        self.hasher.update(line)
        self.size += len(line)

    def write_now(self, chunks: Iterator[bytes]) -> None:
        """A line too big to hold: written at once, a chunk at a time."""
        for chunk in chunks:
            self.out.write(chunk)
            self.hasher.update(chunk)
            self.size += len(chunk)

    def flush(self) -> None:
        while self.held:
            self._emit(self.rng.randrange(len(self.held)))


class BatchRunner:
    """Moves batches through their states and writes their results."""

    def __init__(self, server: BatchHost, files: FileStore) -> None:
        self.server = server
        self.files = files
        self._line_error_turn = 0
        # Every batch's timer and work, deleted batches included, so a stop can end them all.
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def cfg(self) -> FakeConfig:
        return self.server.config

    def reset(self) -> None:
        self._line_error_turn = 0

    def schedule(self, batch: Batch) -> None:
        batch.timer = asyncio.get_running_loop().call_later(
            max(0.0, batch.seconds), self._start, batch
        )
        self._timers.add(batch.timer)

    def cancel(self, batch: Batch) -> None:
        """Cancel a batch whose work has not started; one being written finishes."""
        if batch.final is not None or batch.task is not None:
            return
        self._drop_timer(batch)
        self._end(batch, BatchState.CANCELLED)
        if batch.input_path is not None:
            batch.input_path.unlink(missing_ok=True)

    def forget(self, batch: Batch) -> None:
        """A deleted batch: no more timer; work already running finishes (its file stays)."""
        self._drop_timer(batch)
        if batch.task is None and batch.input_path is not None:
            batch.input_path.unlink(missing_ok=True)

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _drop_timer(self, batch: Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
            self._timers.discard(batch.timer)
            batch.timer = None

    def _start(self, batch: Batch) -> None:
        self._drop_timer(batch)
        if batch.task is None and batch.final is None:
            task = asyncio.get_running_loop().create_task(self._finish(batch))
            batch.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def settle(self, batch: Batch, wait: bool = True) -> None:
        """A read of a batch whose time is up starts its work if the timer has not yet.

        With ``wait`` it gives the work a moment, so a small batch reads as done right on
        time; asyncio.wait never cancels the task, so a client hanging up changes nothing.
        """
        if batch.due(time.monotonic()):
            self._start(batch)
        if wait and batch.task is not None and not batch.task.done():
            await asyncio.wait({batch.task}, timeout=_SETTLE_WAIT_S)

    async def _finish(self, batch: Batch) -> None:
        try:
            if batch.expire:
                self._end(batch, BatchState.EXPIRED)
                return
            if batch.fail:
                batch.error = {"code": 13, "message": "The batch failed: an internal error."}
                self._end(batch, BatchState.FAILED)
                return
            rng = random.Random(f"{self.cfg.seed}:{batch.seq}")
            if batch.inline is not None:
                await self._run_inline(batch, rng)
            else:
                await self._run_file(batch, rng)
            self._end(batch, BatchState.SUCCEEDED)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a fake bug must show as a failed batch, not a hang
            logger.exception("fake batch %s failed", batch.name)
            batch.error = {"code": 13, "message": f"fake server error: {exc}"}
            self._end(batch, BatchState.FAILED)
        finally:
            if batch.input_path is not None and batch.final is not None:
                batch.input_path.unlink(missing_ok=True)

    def _end(self, batch: Batch, state: BatchState) -> None:
        batch.final = state
        batch.ended = time.time()
        logger.info("batch %s: %s", batch.name, state.value)

    async def _run_file(self, batch: Batch, rng: random.Random) -> None:
        assert batch.input_path is not None
        out_id = self.files.new_id("batch-")
        path = self.files.root / f"file-{out_id}"
        with batch.input_path.open("rb") as src, path.open("wb") as dst:
            shuffler = _Shuffler(dst, rng)
            n = 0
            for raw in src:
                if not raw.strip():
                    continue
                data = orjson.loads(raw)
                request = data.pop("request")
                # Other top-level fields of an input line come back with its result.
                head = orjson.dumps(data)
                for kind, payload in self._results(batch, request, rng):
                    if kind == b"response" and batch.oversized_lines > 0:
                        batch.oversized_lines -= 1
                        shuffler.write_now(_oversized(head))
                        continue
                    line = _wrap(head, kind, payload) + b"\n"
                    if batch.garbled_lines > 0:
                        batch.garbled_lines -= 1
                        line = garble_line(line)
                    shuffler.push(line)
                n += 1
                if n % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            shuffler.flush()
        self.files.add(
            out_id, path, display_name=f"{batch.name}-results", mime_type="application/jsonl",
            source="GENERATED", sha256=shuffler.hasher.digest(), size=shuffler.size,
        )
        batch.output_file = f"files/{out_id}"

    async def _run_inline(self, batch: Batch, rng: random.Random) -> None:
        assert batch.inline is not None
        lines: list[bytes] = []
        for n, item in enumerate(batch.inline, 1):
            tail = b""
            if "metadata" in item:
                tail = b',"metadata":' + orjson.dumps(item["metadata"])
            for kind, payload in self._results(batch, item["request"], rng):
                lines.append(b'{"' + kind + b'":' + payload + tail + b"}")
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        # Large inline batches have been seen out of order: clients must match on metadata.
        rng.shuffle(lines)
        batch.inline_out = (
            b'{"inlinedResponses":{"inlinedResponses":[' + b",".join(lines) + b"]}}"
        )
        batch.inline = None  # the requests are no longer needed

    def _results(
        self, batch: Batch, request: object, rng: random.Random
    ) -> Iterator[tuple[bytes, bytes]]:
        """One line's outcome(s): ``(b"response" | b"error", encoded body)``, maybe twice."""
        cfg = self.cfg
        try:
            req = parse_request_obj(request, batch.model, self.files.resolve_uri)
        except ApiError as exc:
            # What generateContent would refuse: that line's error, as a google.rpc.Code.
            batch.failed += 1
            self.server.stats.record_batch_line(error=True)
            code = _GRPC_CODES.get(exc.code, 3)
            yield b"error", orjson.dumps({"code": code, "message": exc.message})
            return
        conv = self.server.conversations.seen(req, self.files.read_image)
        self.server.stats.record_request({**conv, "batch": batch.batch_id})
        if batch.line_error_rate and rng.random() < batch.line_error_rate:
            code, message = _LINE_ERRORS[self._line_error_turn % len(_LINE_ERRORS)]
            self._line_error_turn += 1
            batch.failed += 1
            self.server.stats.record_batch_line(error=True)
            yield b"error", orjson.dumps({"code": code, "message": message})
            return
        fault = self.server.choose_fault(cfg, req.prompt)
        copies = 2 if batch.duplicate_rate and rng.random() < batch.duplicate_rate else 1
        for copy in range(copies):
            kind, payload = self._line(batch.model, req, cfg, fault)
            if copy:
                self.server.stats.record_batch_line(duplicate=True)
            yield kind, payload
        if kind == b"error":
            batch.failed += 1
            self.server.stats.record_batch_line(error=True)
        else:
            batch.succeeded += 1

    def _line(
        self, model: str, req: ParsedRequest, cfg: FakeConfig, fault: str
    ) -> tuple[bytes, bytes]:
        """A fault name as a batch line: transport faults mean nothing here, errors are codes."""
        if fault in ("ok", "slow", "drop", "truncate", "200_html"):
            body, price = self.server.render(model, req, cfg)
            if price is not None:
                self.server.stats.record_batch_billed(req.prompt, price * BATCH_PRICE_FACTOR)
            return b"response", body
        if fault == "block":
            return b"response", blocked(model, req)
        if fault == "empty":
            return b"response", empty_answer(model, req)
        if fault == "image_safety":
            return b"response", answer(model, [], "IMAGE_SAFETY", usage(req, model))
        if fault == "text_only":
            parts: list[dict[str, Any]] = [{"text": TEXT_ONLY}]
            return b"response", answer(model, parts, "STOP", usage(req, model, text=TEXT_ONLY))
        if fault == "502_html":
            return b"error", orjson.dumps({"code": 502, "message": "Bad Gateway"})
        err = fault_error(fault, model, cfg)
        return b"error", orjson.dumps({"code": err.code, "message": err.message})


# A response line over the client's 256 MiB cap for one answer, by 1 MiB.
OVERSIZED_LINE_BYTES = 257 * 1024 * 1024
_CHUNK = 8 * 1024 * 1024


def _oversized(head: bytes) -> Iterator[bytes]:
    """A response line of OVERSIZED_LINE_BYTES: one text part of padding, never held whole."""
    start = _wrap(head, b"response", b'{"candidates":[{"content":{"parts":[{"text":"')
    start = start[:-1]  # _wrap closed the object; the padding goes inside
    end = b'"}]}}]}}\n'
    left = OVERSIZED_LINE_BYTES - len(start) - len(end)
    yield start
    pad = b"A" * _CHUNK
    while left > 0:
        yield pad[: min(left, _CHUNK)]
        left -= _CHUNK
    yield end


def _wrap(head: bytes, kind: bytes, payload: bytes) -> bytes:
    """``{...head fields, "response": payload}`` without decoding the payload again."""
    prefix = b"{" if head == b"{}" else head[:-1] + b","
    return prefix + b'"' + kind + b'":' + payload + b"}"
