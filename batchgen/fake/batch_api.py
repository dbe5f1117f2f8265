"""The fake's Batch API over HTTP: create (with the service's checks), get, list, cancel, delete.

How a batch runs and what its results hold is :mod:`.batch_run`; this module is the wire:
``POST /v1beta/models/M:batchGenerateContent`` answers a long-running Operation, and the input
file is checked at create time, one "Error on line N: ..." message line per bad input line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .batch_run import Batch, BatchRunner, BatchState
from .faults import FakeConfig
from .file_store import FileStore
from .host import BatchHost
from .validate import ApiError, SchemaError, invalid, parse_request_obj, snake
from .wire import (
    check_key,
    decode_page_token,
    encode_page_token,
    error_response,
    json_response,
    page_size,
    rfc3339,
)

logger = logging.getLogger(__name__)

# Input lines checked between yields to the loop while a big file is validated.
_CHECK_YIELD_EVERY = 1000
# At most this many "Error on line N" lines in one create error, as a long file could have many.
_MAX_LINE_ERRORS = 20
_TYPE_BATCH = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_TYPE_OUTPUT = (
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
)
_BATCH_FIELDS = frozenset({"display_name", "input_config", "priority", "model", "name"})
_INPUT_FIELDS = frozenset({"file_name", "requests"})
_INLINE_ITEM_FIELDS = frozenset({"request", "metadata"})


def _fields(obj: object, known: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise invalid(f"Invalid JSON payload received. Expected an object at '{where}'.")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = snake(str(key))
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


class BatchService:
    """The batches of one fake server and their HTTP handlers."""

    def __init__(self, server: BatchHost, files: FileStore) -> None:
        self.server = server
        self.files = files
        self._batches: dict[str, Batch] = {}
        self.runner = BatchRunner(server, files)
        self._seq = 0
        self._creates_503 = 0

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
        self.runner.reset()

    async def close(self) -> None:
        await self.runner.close()
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

        batch_id = "".join(
            secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(36)
        )
        input_name: str | None = None
        input_path: Path | None = None
        inline: list[dict[str, Any]] | None = None
        if "file_name" in source:
            stored = self.files.get(str(source["file_name"]).removeprefix("files/"))
            input_name = f"files/{stored.file_id}"
            # The batch takes its own link first: the client may delete the input file while
            # it is being checked or right after create, and the batch must keep its requests.
            input_path = self.files.root / f"batch-input-{batch_id}"
            try:
                os.link(stored.path, input_path)
            except OSError:
                shutil.copyfile(stored.path, input_path)
            try:
                count = await self._check_file(input_path, model)
            except BaseException:
                input_path.unlink(missing_ok=True)
                raise
        else:
            if len(raw) > cfg.batch_inline_max_bytes:
                raise invalid(
                    f"Request payload size exceeds the limit: {cfg.batch_inline_max_bytes} "
                    "bytes. Use a file for larger batches."
                )
            inline = self._check_inline(source["requests"], model)
            count = len(inline)
        if count == 0:
            if input_path is not None:
                input_path.unlink(missing_ok=True)
            raise invalid("The batch has no requests.")

        self._seq += 1
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
            output_lag=cfg.batch_output_lag,
            garbled_lines=cfg.batch_garbled_lines,
            oversized_lines=cfg.batch_oversized_lines,
        )
        self._batches[batch_id] = batch
        self.server.stats.record_batch_created(display_name)
        self.runner.schedule(batch)
        logger.info("batch %s created: %d requests, %r", batch.name, count, display_name)
        if self._creates_503 < cfg.batch_create_503:
            # The fault the client must survive: the batch exists, but the answer says 503.
            self._creates_503 += 1
            raise ApiError(503, "UNAVAILABLE", "The service is currently unavailable.")
        return json_response(operation(batch, time.monotonic()))

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
                if n % _CHECK_YIELD_EVERY == 0:
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

    # -- get, list, cancel, delete ---------------------------------------------------------

    def _get(self, name: str) -> Batch:
        batch = self._batches.get(name)
        if batch is None:
            raise ApiError(404, "NOT_FOUND", f"Batch batches/{name} was not found.")
        return batch

    async def handle_get(self, request: web.Request) -> web.Response:
        try:
            check_key(request, self.cfg)
            if self.cfg.batch_get_503 > 0:
                self.cfg.batch_get_503 -= 1
                raise ApiError(503, "UNAVAILABLE", "The service is currently unavailable.")
            batch = self._get(request.match_info["name"])
            await self.runner.settle(batch)
            return json_response(operation(batch, time.monotonic(), lag=True))
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
            await self.runner.settle(batch, wait=False)
        now = time.monotonic()
        out: dict[str, Any] = {}
        if shown:
            out["operations"] = [operation(b, now, lag=True) for b in shown]
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
            await self.runner.settle(batch, wait=False)
            self.runner.cancel(batch)
        except ApiError as err:
            return error_response(err)
        return json_response(b"{}")

    async def handle_delete(self, request: web.Request) -> web.Response:
        try:
            check_key(request, self.cfg)
            batch = self._get(request.match_info["name"])
        except ApiError as err:
            return error_response(err)
        self._batches.pop(batch.batch_id, None)
        self.runner.forget(batch)
        return json_response(b"{}")


def operation(batch: Batch, now: float, *, lag: bool = False) -> dict[str, Any]:
    """The batch as the service shows it: a long-running Operation."""
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
    if lag and state is BatchState.SUCCEEDED and batch.output_lag > 0:
        # Reported of the service: SUCCEEDED a little before the output is there.
        batch.output_lag -= 1
        output = None
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
