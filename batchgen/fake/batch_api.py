"""The fake's Batch API: create, get, list, cancel and delete, with results that take time.

A batch reads PENDING for the first quarter of ``batch_seconds``, RUNNING until they are up, then
finishes: its lines are "generated" with the live path's answer builder (so each ``response`` is
byte for byte what ``generateContent`` would answer) and billed at half price. The work starts
on a timer at ``batch_seconds`` and any read of a due batch waits for it, so the state is exact
whether or not anyone polls. Results are written to disk line by line; a bounded window shuffles
them, so they come back out of order as the service's do, without ever holding the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import random
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from aiohttp import web

from .answers import answer, blocked, fault_error, usage
from .faults import FakeConfig
from .files_api import (
    FileStore,
    check_key,
    decode_page_token,
    encode_page_token,
    error_response,
    json_response,
    page_size,
    rfc3339,
)
from .validate import ApiError, ParsedRequest, SchemaError, invalid, parse_request_obj

if TYPE_CHECKING:
    from .app import FakeServer

logger = logging.getLogger(__name__)

_TYPE_BATCH = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_TYPE_OUTPUT = (
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
)
BATCH_PRICE_FACTOR = 0.5
# Lines generated between yields to the loop: a 100k-line batch must not stall other requests.
_YIELD_EVERY = 200
# The shuffle window: lines held back and emitted in random order, capped in count and bytes.
_WINDOW_LINES = 64
_WINDOW_BYTES = 8 * 1024 * 1024
# At most this many "Error on line N" lines in one create error, as a long file could have many.
_MAX_LINE_ERRORS = 20
# Retryable per-line errors, served in turn: gRPC codes and the HTTP-style numbers both occur.
_LINE_ERRORS: tuple[tuple[int, str], ...] = (
    (8, "Resource has been exhausted (e.g. check quota)."),
    (14, "The service is currently unavailable."),
    (429, "Resource has been exhausted (e.g. check quota)."),
    (503, "The model is overloaded. Please try again later."),
)
_BATCH_FIELDS = frozenset({"display_name", "input_config", "priority", "model", "name"})
_INPUT_FIELDS = frozenset({"file_name", "requests"})
_INLINE_ITEM_FIELDS = frozenset({"request", "metadata"})


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


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _fields(obj: object, known: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise invalid(f"Invalid JSON payload received. Expected an object at '{where}'.")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _snake(str(key))
        if name not in known:
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': '
                "Cannot find field."
            )
        out[name] = value
    return out


def _line_error(n: int, raw: bytes, exc: Exception) -> str:
    if isinstance(exc, orjson.JSONDecodeError):
        return f"Error on line {n}: invalid JSON, near column {exc.colno}: {exc.msg}"
    if isinstance(exc, SchemaError) and exc.field:
        col = raw.find(f'"{exc.field}"'.encode()) + 1
        near = f", near column {col}" if col > 0 else ""
        return f"Error on line {n}: invalid JSON{near}: no such field: '{exc.field}'"
    return f"Error on line {n}: {exc}"


def _check_line(raw: bytes, model: str) -> None:
    """What the service checks of an input line at create time: JSON and field names."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        first = raw.lstrip()[:1].decode("latin-1")
        raise invalid(f"invalid JSON, unexpected character: '{first}'; expected '{{'")
    if "request" not in data:
        raise invalid("missing field: 'request'")
    try:
        parse_request_obj(data["request"], model)
    except SchemaError:
        raise
    except ApiError:
        pass  # only schema errors stop a create; a bad value is the line's error when it runs


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

    def flush(self) -> None:
        while self.held:
            self._emit(self.rng.randrange(len(self.held)))


class BatchService:
    """The batches of one fake server and their HTTP handlers."""

    def __init__(self, server: FakeServer, files: FileStore) -> None:
        self.server = server
        self.files = files
        self._batches: dict[str, Batch] = {}
        self._seq = 0
        self._creates_503 = 0
        self._line_error_turn = 0

    @property
    def cfg(self) -> FakeConfig:
        return self.server.config

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{version:v1beta|v1}/batches", self.handle_list)
        app.router.add_get("/{version:v1beta|v1}/batches/{name}", self.handle_get)
        app.router.add_post("/{version:v1beta|v1}/batches/{name}", self.handle_post)
        app.router.add_delete("/{version:v1beta|v1}/batches/{name}", self.handle_delete)

    def reset(self) -> None:
        self._creates_503 = 0
        self._line_error_turn = 0

    async def close(self) -> None:
        for batch in self._batches.values():
            if batch.timer is not None:
                batch.timer.cancel()
            if batch.task is not None and not batch.task.done():
                batch.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await batch.task
        self._batches.clear()

    # -- create ----------------------------------------------------------------------------

    async def handle_create(self, request: web.Request, model: str) -> web.Response:
        try:
            return await self._create(request, model)
        except ApiError as err:
            return error_response(err)

    async def _create(self, request: web.Request, model: str) -> web.Response:
        cfg = self.cfg
        check_key(request, cfg)
        if model not in cfg.models:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version "
                f"{request.match_info['version']}, or is not supported "
                "for batchGenerateContent.",
            )
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"Invalid JSON payload received. {exc}") from None
        top = _fields(body, frozenset({"batch"}), "")
        spec = _fields(top.get("batch"), _BATCH_FIELDS, "batch")
        source = _fields(spec.get("input_config"), _INPUT_FIELDS, "batch.input_config")
        if ("file_name" in source) == ("requests" in source):
            raise invalid("batch.input_config needs exactly one of file_name and requests.")
        display_name = spec.get("display_name") or ""
        if not isinstance(display_name, str):
            raise invalid("Invalid value at 'batch.display_name' (TYPE_STRING).")
        try:
            priority = int(spec.get("priority") or 0)
        except (TypeError, ValueError):
            raise invalid("Invalid value at 'batch.priority' (TYPE_INT64).") from None

        input_name: str | None = None
        input_path: Path | None = None
        inline: list[dict[str, Any]] | None = None
        if "file_name" in source:
            input_name = str(source["file_name"])
            stored = self.files.get(input_name.removeprefix("files/"))
            count = await self._check_file(stored.path, model)
            input_name = f"files/{stored.file_id}"
        else:
            if len(raw) > cfg.batch_inline_max_bytes:
                raise invalid(
                    f"Request payload size exceeds the limit: {cfg.batch_inline_max_bytes} "
                    "bytes. Use a file for larger batches."
                )
            inline = self._check_inline(source["requests"], model)
            count = len(inline)
        if count == 0:
            raise invalid("The batch has no requests.")

        self._seq += 1
        batch_id = "".join(
            secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(36)
        )
        if input_name is not None:
            # The batch keeps its own link, so deleting the input file right after create
            # (which a client may do) cannot take the requests away from a queued batch.
            input_path = self.files.root / f"batch-input-{batch_id}"
            try:
                os.link(stored.path, input_path)
            except OSError:
                shutil.copyfile(stored.path, input_path)
        batch = Batch(
            batch_id=batch_id,
            model=model,
            display_name=display_name,
            priority=priority,
            seq=self._seq,
            created=time.time(),
            started=time.monotonic(),
            request_count=count,
            input_name=input_name,
            input_path=input_path,
            inline=inline,
            seconds=cfg.batch_seconds,
            duplicate_rate=cfg.batch_duplicate_rate,
            expire=cfg.batch_expire,
            fail=cfg.batch_fail,
            line_error_rate=cfg.batch_line_error_rate,
        )
        self._batches[batch_id] = batch
        self.server.stats.record_batch_created(display_name)
        batch.timer = asyncio.get_running_loop().call_later(
            max(0.0, batch.seconds), self._start, batch
        )
        logger.info("batch %s created: %d requests, %r", batch.name, count, display_name)
        if self._creates_503 < cfg.batch_create_503:
            # The fault the client must survive: the batch exists, but the answer says 503.
            self._creates_503 += 1
            raise ApiError(503, "UNAVAILABLE", "The service is currently unavailable.")
        return json_response(self._operation(batch, time.monotonic()))

    async def _check_file(self, path: Path, model: str) -> int:
        errors: list[str] = []
        bad = 0
        count = 0
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                count += 1
                try:
                    _check_line(raw, model)
                except (orjson.JSONDecodeError, ApiError) as exc:
                    bad += 1
                    if len(errors) < _MAX_LINE_ERRORS:
                        errors.append(_line_error(n, raw, exc))
                if n % (_YIELD_EVERY * 5) == 0:
                    await asyncio.sleep(0)
        if errors:
            more = bad - len(errors)
            if more:
                errors.append(f"... and {more} more lines with errors")
            raise invalid("\n".join(errors))
        return count

    def _check_inline(self, requests: object, model: str) -> list[dict[str, Any]]:
        wrapper = _fields(requests, frozenset({"requests"}), "batch.input_config.requests")
        items = wrapper.get("requests") or []
        if not isinstance(items, list):
            raise invalid("batch.input_config.requests.requests must be a list.")
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            where = f"batch.input_config.requests.requests[{i}]"
            fields = _fields(item, _INLINE_ITEM_FIELDS, where)
            if "request" not in fields:
                raise invalid(f"{where}.request is required.")
            try:
                parse_request_obj(fields["request"], model)
            except SchemaError as exc:
                raise invalid(f"{where}.request: {exc.message}") from None
            except ApiError:
                pass  # a bad value: this request's own error when the batch runs
            out.append(fields)
        return out

    # -- running ---------------------------------------------------------------------------

    def _start(self, batch: Batch) -> None:
        batch.timer = None
        if batch.task is None and batch.final is None:
            batch.task = asyncio.get_running_loop().create_task(self._finish(batch))

    async def _settle(self, batch: Batch) -> None:
        """A read of a batch whose time is up waits for its work, so the state never lags."""
        if batch.due(time.monotonic()):
            if batch.timer is not None:
                batch.timer.cancel()
            self._start(batch)
        if batch.task is not None and not batch.task.done():
            await asyncio.shield(batch.task)

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
                    shuffler.push(_wrap(head, kind, payload) + b"\n")
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
            req = parse_request_obj(request, batch.model)
        except ApiError as exc:
            batch.failed += 1
            self.server.stats.record_batch_line(error=True)
            yield b"error", orjson.dumps({"code": 3, "message": exc.message})
            return
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
        if fault == "image_safety":
            return b"response", answer(model, [], "IMAGE_SAFETY", usage(req, model))
        if fault == "text_only":
            from .answers import TEXT_ONLY

            parts: list[dict[str, Any]] = [{"text": TEXT_ONLY}]
            return b"response", answer(model, parts, "STOP", usage(req, model, text=TEXT_ONLY))
        if fault == "502_html":
            return b"error", orjson.dumps({"code": 502, "message": "Bad Gateway"})
        err = fault_error(fault, model, cfg)
        return b"error", orjson.dumps({"code": err.code, "message": err.message})

    # -- get, list, cancel, delete ---------------------------------------------------------

    def _get(self, name: str) -> Batch:
        batch = self._batches.get(name)
        if batch is None:
            raise ApiError(404, "NOT_FOUND", f"Batch batches/{name} was not found.")
        return batch

    def _operation(self, batch: Batch, now: float) -> dict[str, Any]:
        state = batch.state(now)
        counts: dict[str, str] = {"requestCount": str(batch.request_count)}
        if batch.final is None:
            counts["pendingRequestCount"] = str(batch.request_count)
        else:
            if batch.succeeded:
                counts["successfulRequestCount"] = str(batch.succeeded)
            if batch.failed:
                counts["failedRequestCount"] = str(batch.failed)
        updated = batch.created
        if state is BatchState.RUNNING:
            updated += batch.seconds * 0.25
        if batch.ended is not None:
            updated = batch.ended
        meta: dict[str, Any] = {"@type": _TYPE_BATCH, "model": f"models/{batch.model}"}
        if batch.display_name:
            meta["displayName"] = batch.display_name
        if batch.input_name is not None:
            meta["inputConfig"] = {"fileName": batch.input_name}
        meta["createTime"] = rfc3339(batch.created)
        meta["updateTime"] = rfc3339(updated)
        if batch.ended is not None:
            meta["endTime"] = rfc3339(batch.ended)
        meta["batchStats"] = counts
        meta["state"] = state.value
        meta["name"] = batch.name
        if batch.priority:
            meta["priority"] = str(batch.priority)
        op: dict[str, Any] = {"name": batch.name, "metadata": meta}
        output: bytes | None = None
        if batch.output_file is not None:
            output = orjson.dumps({"responsesFile": batch.output_file})
        elif batch.inline_out is not None:
            output = batch.inline_out
        if state is BatchState.SUCCEEDED and output is not None:
            meta["output"] = orjson.Fragment(output)
            op["done"] = True
            response = b'{"@type":"' + _TYPE_OUTPUT.encode() + b'",' + output[1:]
            op["response"] = orjson.Fragment(response)
        elif batch.final is not None:
            op["done"] = True
            if batch.final is BatchState.CANCELLED:
                op["error"] = {"code": 1, "message": "CANCELLED"}
            elif batch.error is not None:
                op["error"] = batch.error
        return op

    async def handle_get(self, request: web.Request) -> web.Response:
        try:
            check_key(request, self.cfg)
            batch = self._get(request.match_info["name"])
            await self._settle(batch)
            return json_response(self._operation(batch, time.monotonic()))
        except ApiError as err:
            return error_response(err)

    async def handle_list(self, request: web.Request) -> web.Response:
        try:
            check_key(request, self.cfg)
            after = decode_page_token(request.query.get("pageToken", ""))
            size = page_size(request, 50, 1000)
        except ApiError as err:
            return error_response(err)
        newest = sorted(self._batches.values(), key=lambda b: b.seq, reverse=True)
        if after is not None:
            newest = [b for b in newest if b.seq < after]
        shown = newest[:size]
        for batch in shown:
            await self._settle(batch)
        now = time.monotonic()
        out: dict[str, Any] = {}
        if shown:
            out["operations"] = [
                self._operation(b, now) for b in shown if b.batch_id in self._batches
            ]
        if len(newest) > size and shown:
            out["nextPageToken"] = encode_page_token(shown[-1].seq)
        return json_response(out)

    async def handle_post(self, request: web.Request) -> web.Response:
        try:
            check_key(request, self.cfg)
            batch_id, _, method = request.match_info["name"].partition(":")
            if method != "cancel":
                raise ApiError(404, "NOT_FOUND", f"Method {method or '(none)'} not found.")
            await request.read()
            batch = self._get(batch_id)
            await self._settle(batch)
            if batch.final is None and batch.task is None:
                if batch.timer is not None:
                    batch.timer.cancel()
                    batch.timer = None
                self._end(batch, BatchState.CANCELLED)
                if batch.input_path is not None:
                    batch.input_path.unlink(missing_ok=True)
        except ApiError as err:
            return error_response(err)
        return json_response(b"{}")

    async def handle_delete(self, request: web.Request) -> web.Response:
        try:
            check_key(request, self.cfg)
            batch = self._get(request.match_info["name"])
        except ApiError as err:
            return error_response(err)
        if batch.timer is not None:
            batch.timer.cancel()
        self._batches.pop(batch.batch_id, None)
        if batch.task is None and batch.input_path is not None:
            batch.input_path.unlink(missing_ok=True)
        return json_response(b"{}")


def _wrap(head: bytes, kind: bytes, payload: bytes) -> bytes:
    """``{...head fields, "response": payload}`` without decoding the payload again."""
    prefix = b"{" if head == b"{}" else head[:-1] + b","
    return prefix + b'"' + kind + b'":' + payload + b"}"
