"""The fake's HTTP app: answers like Gemini's ``generateContent``, faults included.

Every test and benchmark of the project talks to this instead of Google, so the order of checks
follows the service (key, model, size, body, quota, then whatever the model does) and the hot
path does no image work: images come from :class:`ImageCache` already base64-encoded.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from . import tiers
from .answers import (
    HTML_200,
    HTML_502,
    TEXT_ONLY,
    answer,
    blocked,
    capacity_exhausted,
    caption,
    empty_answer,
    fault_error,
    grounding,
    image_price,
    image_tokens,
    is_flash,
    model_not_found,
    rate_limited,
    thought_text,
    too_large,
    usage,
)
from .batch_api import BatchService
from .faults import FAULT_NAMES, FakeConfig, FaultChooser, RateWindow, apply_config_json
from .file_store import FileStore
from .files_api import FilesApi
from .images import COLOUR_BUCKETS, EncodedImage, ImageCache, colour_bucket
from .stamps import Conversations
from .stats import FakeStats
from .validate import ApiError, ParsedRequest, invalid, parse_request
from .wire import check_key

logger = logging.getLogger(__name__)

# URLs handed out in url_output modes; the oldest are forgotten (the real ones expire too).
MAX_STORED_FILES = 100_000
# aiohttp's own cap must not trip before ours: max_request_bytes is checked by hand, live.
_CLIENT_MAX_SIZE = 1 << 34
# Big final images are spliced into the dumped JSON instead of passing through orjson, which
# scans every character of a 5 MB string; the marker is random so no prompt can contain it.
_SPLICE = f"fake-splice-{secrets.token_hex(16)}"
_SPLICE_BYTES = _SPLICE.encode("ascii")
_SPLICE_OVER = 64 * 1024
_JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}
_HTML_HEADERS = {"Content-Type": "text/html; charset=UTF-8"}


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    h = _JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers}
    return web.Response(body=body, status=status, headers=h)


def _error(err: ApiError) -> web.Response:
    return _json(err.body(), err.code, err.headers)


# Builds the final image's part from the image and its thoughtSignature (if any).
FinalPart = Callable[[EncodedImage, dict[str, Any]], dict[str, Any]]


def _inline_part(final: EncodedImage, sig: dict[str, Any]) -> dict[str, Any]:
    # Always labelled PNG: with mislabelling on, the bytes may be JPEG.
    data = _SPLICE if len(final.b64_bytes) > _SPLICE_OVER else final.b64
    return {"inlineData": {"mimeType": "image/png", "data": data}, **sig}


class FakeServer:
    """The fake on the caller's event loop: ``async with FakeServer(cfg) as srv: srv.url``."""

    def __init__(
        self, config: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        # Handlers read self.config on every request, so tests may edit it or replace it live.
        self.config = config if config is not None else FakeConfig()
        self.host = host
        self.port = port
        self.url = ""
        self.stats = FakeStats()
        self.images = ImageCache()
        self._chooser = FaultChooser(self.config.seed)
        # Images drawn per prompt (by hash): the service draws a new picture for each request,
        # so the second answer to a prompt (a redo of a rejected image) must not repeat the first;
        # the salt varies the pictures from one server to the next (`run --fake` starts one per
        # run), where the count starts again.
        self._drawn: dict[int, int] = {}
        self._salt = secrets.randbelow(COLOUR_BUCKETS)
        self._rpm = RateWindow()
        self._ipm = RateWindow()
        self._files: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.conversations = Conversations(self._salt)
        self._runner: web.AppRunner | None = None
        # Files and Batch API: uploads live in a temp dir made on first use.
        self.file_store = FileStore(self.stats)
        self.batches = BatchService(self, self.file_store)
        self.files_api = FilesApi(self.file_store, lambda: self.config)

    # -- lifecycle -------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        app.router.add_post("/{version:v1beta|v1}/models/{rest}", self._handle_generate)
        app.router.add_get("/_fake/stats", self._handle_stats)
        app.router.add_get("/_fake/timeline", self._handle_timeline)
        app.router.add_get("/_fake/config", self._handle_get_config)
        app.router.add_post("/_fake/config", self._handle_config)
        app.router.add_post("/_fake/reset", self._handle_reset)
        app.router.add_get("/_fake/files/{name}", self._handle_file)
        self.files_api.add_routes(app)
        self.batches.add_routes(app)
        return app

    async def start(self) -> None:
        # No access log: at thousands of requests a second it would cost more than the answers.
        # A short shutdown_timeout: a "slow" fault must not hold stop() for its full stall.
        # handler_cancellation=False (aiohttp's default, pinned): a client hanging up must not
        # cancel its handler, or a generation it walked away from would never be billed.
        runner = web.AppRunner(
            self.make_app(), access_log=None, shutdown_timeout=0.25, handler_cancellation=False
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=2048)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = int(port)
        shown = f"[{host}]" if ":" in str(host) else str(host)
        self.url = f"http://{shown}:{self.port}"
        logger.info("fake Gemini server listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.batches.close()
        self.file_store.close()

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def reset(self) -> None:
        """Zero the stats, re-arm rules, replay the script, empty the rate windows."""
        self.stats.reset()
        self._chooser.reset(self.config)
        self._rpm.clear()
        self._ipm.clear()
        self.batches.reset()

    def choose_fault(self, cfg: FakeConfig, prompt: str) -> str:
        """The fault for one generation (batch lines take theirs from the same rules)."""
        return self._chooser.choose(cfg, prompt)

    # -- generateContent -------------------------------------------------------------------

    async def _handle_generate(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["rest"].partition(":")
        if method == "batchGenerateContent":
            # Not counted in the live stats: those must show only generateContent traffic.
            return await self.batches.handle_create(request, model)
        if method != "generateContent":
            return _error(
                ApiError(
                    404,
                    "NOT_FOUND",
                    f"Method {method or '(none)'} is not supported by the fake server.",
                )
            )
        arrived = self.stats.begin()
        status = 0
        try:
            try:
                resp, status = await self._generate(request, model)
            except ApiError as err:
                resp, status = _error(err), err.code
            except ConnectionResetError:
                # The client hung up before its body arrived: nothing generated, nothing sent.
                # Caught here so aiohttp does not log it as "Error handling request".
                return web.Response()
            if status and request.transport is None and not resp.prepared:
                # Generated (and billed) after the client gave up: no answer went out.
                status = 0
            return resp
        finally:
            self.stats.end(status, arrived)

    async def _generate(self, request: web.Request, model: str) -> tuple[web.StreamResponse, int]:
        cfg = self.config
        self._identify(request, model, cfg)  # at once, as the service answers these
        try:
            req, fault = await self._admit(request, model, cfg)
        except ApiError:
            await self._think(cfg)  # errors take latency_s too
            raise
        # The "generation": the body is already in, so a client hanging up from here on is
        # still billed when the work completes, as the service does. aiohttp does not cancel
        # a handler on disconnect (handler_cancellation=False, pinned in start()), and billing
        # follows the last await with none in between, so only a server stop can prevent it.
        await self._think(cfg, tiers.extra_latency(cfg, req))
        resp, status = await self._serve(request, fault, model, req, cfg)
        if not resp.prepared:
            resp.headers[tiers.TIER_HEADER] = tiers.served_tier(req)
        return resp, status

    @staticmethod
    async def _think(cfg: FakeConfig, extra_s: float = 0.0) -> None:
        if cfg.latency_s + extra_s > 0:
            await asyncio.sleep(cfg.latency_s + extra_s)

    @staticmethod
    def _identify(request: web.Request, model: str, cfg: FakeConfig) -> None:
        """Who is calling, then which model: answered within a second by the service, so with
        no latency here (with it, a wrong key cost what the first-answer gate lets out)."""
        check_key(request, cfg)
        if model not in cfg.models:
            raise model_not_found(model, request.match_info["version"])

    async def _admit(
        self, request: web.Request, model: str, cfg: FakeConfig
    ) -> tuple[ParsedRequest, str]:
        """Everything the service checks on arrival: the request, the quota, then the fault."""
        now = time.monotonic()  # the limiter counts a request when it arrives
        if request.content_length is not None and request.content_length > cfg.max_request_bytes:
            raise too_large(cfg.max_request_bytes)
        body = await request.read()
        if len(body) > cfg.max_request_bytes:
            raise too_large(cfg.max_request_bytes)
        req = parse_request(body, model, self.file_store.resolve_uri)
        self.stats.record_prompt(req.prompt)
        self.stats.record_request(self.conversations.seen(req, self.file_store.read_image))
        tiers.refuse_tier(cfg, model, req)
        self._check_quota(cfg, model, req, now)
        tiers.shed(cfg, req, self._chooser, self.stats)
        fault = self._chooser.choose(cfg, req.prompt)
        if cfg.rpm_limit is not None:
            self._rpm.add(now, cfg)
        self.stats.record_fault(fault)
        if fault != "ok":
            logger.debug("fault %s for prompt %.40r", fault, req.prompt)
        return req, fault

    def _check_quota(self, cfg: FakeConfig, model: str, req: ParsedRequest, now: float) -> None:
        # Check both before recording either: a request turned away does not use up quota.
        if cfg.rpm_limit is not None:
            wait = self._rpm.wait(now, cfg.rpm_limit, cfg)
            if wait > 0:
                self.stats.record_fault("rate_limit_rpm")
                if cfg.rate_limit_style == "capacity":
                    raise capacity_exhausted()
                raise rate_limited(
                    model,
                    wait,
                    "GenerateRequestsPerMinutePerProjectPerModel",
                    "generate_content_paid_tier_requests",
                    limit=cfg.rpm_limit,
                )
        if cfg.ipm_limit is not None and req.want_image:
            wait = self._ipm.wait(now, cfg.ipm_limit, cfg)
            if wait > 0:
                self.stats.record_fault("rate_limit_ipm")
                if cfg.rate_limit_style == "capacity":
                    raise capacity_exhausted()
                raise rate_limited(
                    model,
                    wait,
                    "GenerateImagesPerMinutePerProjectPerModel",
                    "generate_content_paid_tier_images",
                    limit=cfg.ipm_limit,
                )

    async def _serve(
        self, request: web.Request, fault: str, model: str, req: ParsedRequest, cfg: FakeConfig
    ) -> tuple[web.StreamResponse, int]:
        if fault == "ok":
            return _json(self._deliver(request, model, req, cfg)), 200
        if fault == "slow":
            await asyncio.sleep(cfg.slow_s)
            # Billed even if the client gave up meanwhile: the service finished the work.
            return _json(self._deliver(request, model, req, cfg)), 200
        if fault == "drop":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(), 0
        if fault == "truncate":
            return await self._truncate(request, self._deliver(request, model, req, cfg)), 200
        if fault == "block":
            return _json(blocked(model, req)), 200
        if fault == "empty":
            return _json(empty_answer(model, req)), 200
        if fault == "image_safety":
            return _json(answer(model, [], "IMAGE_SAFETY", usage(req, model))), 200
        if fault == "text_only":
            parts: list[dict[str, Any]] = [{"text": TEXT_ONLY}]
            return _json(answer(model, parts, "STOP", usage(req, model, text=TEXT_ONLY))), 200
        if fault == "502_html":
            return web.Response(body=HTML_502, status=502, headers=_HTML_HEADERS), 502
        if fault == "200_html":
            return web.Response(body=HTML_200, status=200, headers=_HTML_HEADERS), 200
        if fault not in FAULT_NAMES:
            logger.error("unknown fault %r in fake config", fault)
        raise fault_error(fault, model, cfg)

    async def _truncate(self, request: web.Request, body: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=_JSON_HEADERS)
        resp.content_length = len(body)
        try:
            await resp.prepare(request)
            await resp.write(body[: max(1, len(body) // 2)])
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError: client gone
            return resp
        # close(), not abort(): flush what was written, then hang up short of Content-Length.
        if request.transport is not None:
            request.transport.close()
        return resp

    def _deliver(
        self, request: web.Request, model: str, req: ParsedRequest, cfg: FakeConfig
    ) -> bytes:
        """A successful generation: the body, billed and counted against the image quota."""
        body, price = self.render(
            model, req, cfg, lambda final, sig: self._final_part(request, final, cfg, sig)
        )
        if price is not None:
            self.stats.record_billed(req.prompt, price * tiers.factor(model, req))
            if cfg.ipm_limit is not None:
                self._ipm.add(time.monotonic(), cfg)
        return body

    def render(
        self,
        model: str,
        req: ParsedRequest,
        cfg: FakeConfig,
        final_part: FinalPart | None = None,
    ) -> tuple[bytes, float | None]:
        """The body of a successful generation and the live price of its image (None: no image).

        Billing is the caller's: live answers bill at list price, batch lines at half.
        ``final_part`` shapes the image part (URL modes); by default it is inline base64.
        """
        if not req.want_image:
            # Asked for TEXT only: an image model then answers in words, billed by tokens.
            text = caption(req.prompt)
            return answer(model, [{"text": text}], "STOP", usage(req, model, text=text)), None
        thinking = not is_flash(model)  # 2.5 flash image does not think
        size = "1K" if is_flash(model) else req.size
        bucket = colour_bucket(req.prompt)
        if cfg.fresh_pictures:
            key = hash(req.prompt)
            drawn = self._drawn.get(key, 0)
            self._drawn[key] = drawn + 1
            # 23: coprime with 64, so a prompt's pictures go through all 64 before one is back.
            bucket = (bucket + self._salt + drawn * 23) % COLOUR_BUCKETS
        jpeg = self._chooser.chance(cfg.mislabel_jpeg_rate)
        final = self.images.final(
            req.ratio, size, bucket, full_size=cfg.full_size, image_bytes=cfg.image_bytes, jpeg=jpeg
        )
        final, sig = self.conversations.stamped(final, req, thinking)  # a signature per answer
        parts: list[dict[str, Any]] = []
        if thinking:
            parts.append({"text": thought_text(req.prompt), "thought": True})
            for i in range(max(0, min(2, cfg.thought_images))):
                im = self.images.interim(req.ratio, bucket, i, full_size=cfg.full_size)
                parts.append(
                    {"inlineData": {"mimeType": "image/png", "data": im.b64}, "thought": True}
                )
        text = ""
        if req.want_text:
            text = caption(req.prompt)
            parts.append({"text": text, **sig})
        parts.append(final_part(final, sig) if final_part else _inline_part(final, sig))

        use = usage(req, model, image=image_tokens(model, size), text=text, thinking=thinking)
        grounded = grounding(req.prompt) if req.google_search else None
        body = answer(model, parts, "STOP", use, grounded)
        if parts[-1].get("inlineData", {}).get("data") is _SPLICE:
            # Base64 never needs JSON escaping, so it can go into the encoded body as-is.
            body = body.replace(_SPLICE_BYTES, final.b64_bytes, 1)
        return body, image_price(model, size)

    def _final_part(
        self, request: web.Request, final: EncodedImage, cfg: FakeConfig, sig: dict[str, Any]
    ) -> dict[str, Any]:
        mode = cfg.url_output
        if mode is None:
            return _inline_part(final, sig)
        if mode == "data":
            return {"text": f"![image](data:image/png;base64,{final.b64})"}
        name = f"{secrets.token_hex(8)}.png"
        self._files[name] = final.data
        if len(self._files) > MAX_STORED_FILES:
            self._files.popitem(last=False)
        url = f"{request.scheme}://{request.host}/_fake/files/{name}"
        if mode == "file_data":
            return {"fileData": {"mimeType": "image/png", "fileUri": url}}
        if mode == "text":
            return {"text": url}
        if mode == "escaped":
            # The literal six characters \u0026 in the text, as a JSON-escaping proxy leaves it.
            return {"text": f"![image]({url}?a=1\\u0026b=2)"}
        return {"text": f"![image]({url})"}

    # -- control endpoints -----------------------------------------------------------------

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps(self.stats.snapshot()))

    async def _handle_timeline(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps({"timeline": self.stats.timeline}))

    async def _handle_get_config(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps(self.config.to_json()))

    async def _handle_config(self, request: web.Request) -> web.Response:
        try:
            apply_config_json(self.config, orjson.loads(await request.read()))
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return _error(invalid(f"bad fake config: {exc}"))
        return _json(orjson.dumps(self.config.to_json()))

    async def _handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json(b"{}")

    async def _handle_file(self, request: web.Request) -> web.Response:
        data = self._files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404, text="expired or unknown file")
        return web.Response(body=data, headers={"Content-Type": "image/png"})
