"""The client against the fake server over real HTTP: every answer shape and every error class."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from PIL import Image

from batchgen import errors as e
from batchgen.api.client import GeminiClient
from batchgen.api.translate import error_from_http, parse_retry_delay
from batchgen.fake import FakeConfig, FakeServer, Rule
from batchgen.fake.stamps import unstamped
from batchgen.manifest.references import sniff_image_type
from batchgen.settings import ClientSettings
from batchgen.spec import JobSpec, Provider, Reference
from tests.helpers.cli import SECRET
from tests.helpers.images import make_image


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with FakeServer(FakeConfig(api_key=SECRET, retry_delay_s=1.5, slow_s=2.0)) as srv:
        yield srv


def settings(srv: FakeServer, provider: Provider = Provider.ANYFAST, **kw: object) -> ClientSettings:
    base = {"provider": provider, "base_url": srv.url, "api_key": SECRET, "timeout_s": 5.0}
    base.update(kw)
    return ClientSettings(**base)  # type: ignore[arg-type]


def job(prompt: str = "a red fox", **kw: object) -> JobSpec:
    return JobSpec(job_id="j", prompt=prompt, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("provider", [Provider.ANYFAST, Provider.GOOGLE])
@pytest.mark.parametrize(("ratio", "size"), [("16:9", "1K"), ("9:16", "2K"), ("1:1", "4K")])
async def test_success_shape(fake: FakeServer, provider: Provider, ratio: str, size: str) -> None:
    async with GeminiClient(settings(fake, provider)) as client:
        img = await client.generate(job(aspect_ratio=ratio, image_size=size, output_text=True))
    decoded = Image.open(io.BytesIO(img.data))
    decoded.load()
    w, h = map(int, ratio.split(":"))
    assert abs(decoded.width / decoded.height - w / h) < 0.05
    assert (img.width, img.height) == decoded.size
    assert img.mime_type == "image/png"
    assert img.text and "fox" in img.text
    expected_tokens = 2000 if size == "4K" else 1120
    details = img.usage["candidatesTokensDetails"]  # type: ignore[index]
    image_tokens = [d["tokenCount"] for d in details if d["modality"] == "IMAGE"]
    assert image_tokens == [expected_tokens]
    assert fake.stats.requests == 1


async def test_final_image_not_thought_image(fake: FakeServer) -> None:
    fake.config.thought_images = 2
    fake.config.fresh_pictures = False  # the two answers below are compared byte for byte
    async with aiohttp.ClientSession() as s, s.post(
        f"{fake.url}/v1beta/models/gemini-3-pro-image:generateContent",
        json={"contents": [{"parts": [{"text": "a red fox"}]}]},
        headers={"x-goog-api-key": SECRET},
    ) as r:
        raw = await r.json()
    parts = raw["candidates"][0]["content"]["parts"]
    thought = [base64.b64decode(p["inlineData"]["data"]) for p in parts
               if "inlineData" in p and p.get("thought")]
    final = [base64.b64decode(p["inlineData"]["data"]) for p in parts
             if "inlineData" in p and not p.get("thought")]
    assert len(thought) == 2 and len(final) == 1
    async with GeminiClient(settings(fake)) as client:
        img = await client.generate(job())
    # Each answer's image carries its own stamp (batchgen/fake/stamps.py); the picture is the same.
    assert unstamped(img.data) == unstamped(final[-1])
    assert unstamped(img.data) not in thought


async def test_mislabelled_jpeg_is_judged_by_bytes(fake: FakeServer) -> None:
    fake.config.mislabel_jpeg_rate = 1.0
    async with GeminiClient(settings(fake)) as client:
        img = await client.generate(job())
    assert img.data[:3] == b"\xff\xd8\xff"
    assert img.mime_type == "image/jpeg"
    Image.open(io.BytesIO(img.data)).load()


@pytest.mark.parametrize("mode", ["file_data", "text", "markdown", "escaped", "data"])
async def test_url_outputs(fake: FakeServer, mode: str) -> None:
    fake.config.url_output = mode
    async with GeminiClient(settings(fake)) as client:
        img = await client.generate(job(aspect_ratio="3:2"))
    decoded = Image.open(io.BytesIO(img.data))
    decoded.load()
    assert decoded.width > decoded.height


async def test_reference_images_are_sent(fake: FakeServer, tmp_path: Path) -> None:
    refs = []
    for i, fmt in enumerate(["PNG", "JPEG"]):
        p = make_image(tmp_path / f"r{i}.img", (40, 30), fmt)
        data = p.read_bytes()
        refs.append(Reference(source=p.name, path=p, sha256=hashlib.sha256(data).hexdigest(),
                              mime_type=sniff_image_type(data) or "", size_bytes=len(data)))
    async with GeminiClient(settings(fake)) as client:
        img = await client.generate(job(references=tuple(refs)))
    # Left out, the aspect ratio follows the first reference (4:3).
    assert abs(img.width / img.height - 4 / 3) < 0.05
    assert fake.stats.requests == 1


FAULTS = [
    ("429", e.RateLimitError, 1.5),
    ("429_retry_after", e.RateLimitError, 2.0),
    ("429_bare", e.RateLimitError, None),
    ("429_daily", e.DailyQuotaError, None),
    ("500", e.ServerError, None),
    ("503", e.ServerError, None),
    ("504", e.ServerError, None),
    ("408", e.ServerError, None),
    ("502_html", e.ServerError, None),
    ("200_html", e.BadResponseError, None),
    ("drop", e.ConnectionError_, None),
    ("truncate", e.BadResponseError, None),
    ("block", e.BlockedError, None),
    ("image_safety", e.BlockedError, None),
    ("text_only", e.NoImageError, None),
    ("400", e.InvalidRequestError, None),
]


@pytest.mark.parametrize(("fault", "cls", "delay"), FAULTS)
async def test_error_classes(fake: FakeServer, fault: str, cls: type[e.APIError],
                             delay: float | None) -> None:
    fake.config.script = [fault]
    async with GeminiClient(settings(fake)) as client:
        with pytest.raises(cls) as info:
            await client.generate(job())
    err = info.value
    assert type(err) is cls
    if delay is not None:
        assert err.retry_after == pytest.approx(delay, abs=0.01)
    elif fault != "429_daily":
        assert err.retry_after is None
    assert SECRET not in str(err) and SECRET not in repr(err)
    if fault == "truncate":
        assert err.maybe_billed
    if fault in ("block", "image_safety", "text_only"):
        assert err.usage is not None


async def test_timeout(fake: FakeServer) -> None:
    fake.config.script = ["slow"]
    async with GeminiClient(settings(fake, timeout_s=0.3)) as client:
        with pytest.raises(e.TimeoutError_):
            await client.generate(job())


async def test_wrong_key_and_unknown_model(fake: FakeServer) -> None:
    async with GeminiClient(settings(fake, api_key="wrong-key-123")) as client:
        with pytest.raises(e.AuthError) as info:
            await client.generate(job())
    assert info.value.http_status == 400
    async with GeminiClient(settings(fake)) as client:
        with pytest.raises(e.ModelNotFoundError):
            await client.generate(job(model="gemini-3-pro-image-preview"))


async def test_connection_refused_is_transient_and_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = ClientSettings(provider=Provider.ANYFAST, base_url="http://127.0.0.1:9", api_key=SECRET,
                         timeout_s=2)
    async with GeminiClient(cfg) as client:
        with pytest.raises(e.ConnectionError_) as info:
            await client.generate(job())
    assert SECRET not in str(info.value)
    assert SECRET not in caplog.text


async def test_prompt_rule_and_rates(fake: FakeServer) -> None:
    fake.config.rules = [Rule(match="forbidden", fault="block")]
    async with GeminiClient(settings(fake)) as client:
        with pytest.raises(e.BlockedError):
            await client.generate(job("something forbidden"))
        await client.generate(job("something fine"))


def test_parse_retry_delay_sources() -> None:
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45.837906927s"}]
    assert parse_retry_delay(details, {}, "") == pytest.approx(45.837906927)
    assert parse_retry_delay([], {"Retry-After": "7"}, "") == 7.0
    assert parse_retry_delay([], {}, "Quota exceeded. Please retry in 12.5s.") == 12.5
    assert parse_retry_delay([], {}, "Please retry in 250ms") == 0.25
    assert parse_retry_delay([], {}, "nothing") is None


def test_error_table() -> None:
    body = orjson.dumps({"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}})
    assert isinstance(error_from_http(403, body, {}), e.AuthError)
    assert isinstance(error_from_http(401, b"", {}), e.AuthError)
    assert isinstance(error_from_http(404, b"", {}), e.ModelNotFoundError)
    assert isinstance(error_from_http(413, b"", {}), e.InvalidRequestError)
    daily = orjson.dumps({"error": {"code": 429, "message": "q", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel"}]}]}})
    assert isinstance(error_from_http(429, daily, {}), e.DailyQuotaError)


async def test_url_reference_is_fetched_and_sent(fake: FakeServer, tmp_path: Path) -> None:
    from aiohttp import web

    png = make_image(tmp_path / "r.png", (60, 20)).read_bytes()
    hits: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/missing.png":
            return web.Response(status=404)
        return web.Response(body=png, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with GeminiClient(settings(fake)) as client:
            url = f"http://127.0.0.1:{port}/r.png"
            img = await client.generate(job(references=(Reference(source=url, url=url),)))
            # 60x20 is 3:1: the output follows the nearest allowed ratio, 21:9.
            assert img.width > 2 * img.height
            missing = f"http://127.0.0.1:{port}/missing.png"
            with pytest.raises(e.ReferenceError_):
                await client.generate(job(references=(Reference(source=missing, url=missing),)))
    finally:
        await runner.cleanup()
    assert hits == ["/r.png", "/missing.png"]
    assert fake.stats.requests == 1
