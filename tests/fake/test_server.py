"""The fake Gemini server, over real HTTP: shapes, validation, faults, quotas, stats."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from batchgen import spec
from batchgen.fake import FAULT_NAMES, FakeConfig, FakeServer, Rule, ThreadedFakeServer

MODEL = "gemini-3-pro-image"


FLASH = "gemini-2.5-flash-image"


KEY = "fake-key"


def request_body(
    prompt: str = "a llama next to me",
    ratio: str | None = None,
    size: str | None = None,
    refs: list[tuple[str, str]] | None = None,
    modalities: list[str] | None = None,
    **gen: Any,
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": prompt}]
    for mime, data in refs or []:
        parts.append({"inlineData": {"mimeType": mime, "data": data}})
    image_config: dict[str, str] = {}
    if ratio:
        image_config["aspectRatio"] = ratio
    if size:
        image_config["imageSize"] = size
    config: dict[str, Any] = {"responseModalities": modalities or ["TEXT", "IMAGE"], **gen}
    if image_config:
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def png_b64(width: int, height: int, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
async def srv() -> AsyncIterator[FakeServer]:
    async with FakeServer(FakeConfig(retry_delay_s=0.05)) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession,
    srv: FakeServer,
    body: Any,
    *,
    model: str = MODEL,
    key: str | None = KEY,
    header_key: bool = True,
    version: str = "v1beta",
    timeout: float | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    url = f"{srv.url}/{version}/models/{model}:generateContent"
    headers = {}
    if key is not None and header_key:
        headers["x-goog-api-key"] = key
    elif key is not None:
        url += f"?key={key}"
    kw: dict[str, Any] = {"headers": headers}
    kw["data" if isinstance(body, bytes) else "json"] = body
    if timeout is not None:
        kw["timeout"] = aiohttp.ClientTimeout(total=timeout)
    async with session.post(url, **kw) as resp:
        raw = await resp.read()
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = raw
        return resp.status, data, resp


def final_image(data: dict[str, Any]) -> tuple[str, bytes]:
    parts = data["candidates"][0]["content"]["parts"]
    last = [p for p in parts if not p.get("thought") and "inlineData" in p][-1]
    return last["inlineData"]["mimeType"], base64.b64decode(last["inlineData"]["data"])


def decode(raw: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


def assert_ratio(img: Image.Image, ratio: str) -> None:
    w, h = spec.BASE_PIXELS[ratio]
    assert abs(img.width / img.height - w / h) < 0.05, (img.size, ratio)


# -- success ---------------------------------------------------------------------------------


async def test_success_shape(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    status, data, resp = await post(session, srv, request_body(ratio="16:9", size="2K"))
    assert status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    cand = data["candidates"][0]
    assert cand["finishReason"] == "STOP" and cand["index"] == 0
    assert cand["content"]["role"] == "model"
    parts = cand["content"]["parts"]
    assert parts[0]["thought"] is True and "text" in parts[0]
    assert parts[1]["thought"] is True and parts[1]["inlineData"]["mimeType"] == "image/png"
    assert parts[2]["text"].startswith("Here is your image of a llama")
    assert "thoughtSignature" in parts[2] and "thought" not in parts[2]
    assert "thoughtSignature" in parts[3] and "thought" not in parts[3]
    mime, raw = final_image(data)
    assert mime == "image/png" and raw.startswith(b"\x89PNG")
    final = decode(raw)
    assert_ratio(final, "16:9")
    interim = base64.b64decode(parts[1]["inlineData"]["data"])
    assert interim != raw
    use = data["usageMetadata"]
    assert use["candidatesTokensDetails"][-1] == {"modality": "IMAGE", "tokenCount": 1120}
    assert use["thoughtsTokenCount"] == 264
    assert use["totalTokenCount"] == (
        use["promptTokenCount"] + use["candidatesTokenCount"] + use["thoughtsTokenCount"]
    )
    assert data["modelVersion"] == MODEL and data["responseId"]


@pytest.mark.parametrize("ratio", ["1:1", "9:16", "21:9", "4:5"])
async def test_ratios(srv: FakeServer, session: aiohttp.ClientSession, ratio: str) -> None:
    _, data, _ = await post(session, srv, request_body(ratio=ratio))
    assert_ratio(decode(final_image(data)[1]), ratio)


@pytest.mark.parametrize(
    ("model", "size", "tokens"),
    [
        (MODEL, "1K", 1120),
        (MODEL, "2K", 1120),
        (MODEL, "4K", 2000),
        (FLASH, None, 1290),
    ],
)
async def test_usage_by_size(
    srv: FakeServer, session: aiohttp.ClientSession, model: str, size: str | None, tokens: int
) -> None:
    status, data, _ = await post(
        session, srv, request_body(size=size, modalities=["IMAGE"]), model=model
    )
    assert status == 200
    use = data["usageMetadata"]
    assert use["candidatesTokenCount"] == tokens
    parts = data["candidates"][0]["content"]["parts"]
    if model == FLASH:
        # 2.5 flash image does not think: no thought parts, no thinking tokens.
        assert len(parts) == 1 and "thoughtsTokenCount" not in use
    else:
        assert [p.get("thought", False) for p in parts] == [True, True, False]


async def test_different_prompts_different_images(
    srv: FakeServer, session: aiohttp.ClientSession
) -> None:
    images = set()
    for prompt in ("a red fox", "a blue whale", "a green frog"):
        _, data, _ = await post(session, srv, request_body(prompt))
        images.add(final_image(data)[1])
    assert len(images) == 3


async def test_snake_case_and_reference_ratio(
    srv: FakeServer, session: aiohttp.ClientSession
) -> None:
    body = {
        "contents": [
            {
                "parts": [
                    {"text": "make it blue"},
                    {"inline_data": {"mime_type": "image/jpeg", "data": png_b64(300, 200, "JPEG")}},
                ]
            }
        ],
        "generation_config": {
            "response_modalities": ["IMAGE"],
            "image_config": {"image_size": "1K"},
        },
    }
    status, data, _ = await post(session, srv, body, key=KEY, header_key=False)
    assert status == 200, data
    assert_ratio(decode(final_image(data)[1]), "3:2")  # follows the first reference
    assert data["usageMetadata"]["promptTokenCount"] >= 560
    status, data, _ = await post(session, srv, body, version="v1")
    assert status == 200


async def test_full_size_and_image_bytes(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.full_size = True
    _, data, _ = await post(session, srv, request_body(ratio="3:4"))
    assert decode(final_image(data)[1]).size == (896, 1200)
    srv.config.full_size = False
    srv.config.image_bytes = 200_000
    srv.config.thought_images = 0
    _, data, _ = await post(session, srv, request_body(ratio="16:9"))
    raw = final_image(data)[1]
    assert abs(len(raw) - 200_000) < 2_000
    assert_ratio(decode(raw), "16:9")
    cached = len(srv.images)
    await post(session, srv, request_body("another prompt", ratio="16:9"))
    assert len(srv.images) == cached  # served from cache, not re-encoded


# -- auth, model, validation -----------------------------------------------------------------


async def test_auth(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    status, data, _ = await post(session, srv, request_body(), key=None)
    assert status == 403 and data["error"]["status"] == "PERMISSION_DENIED"
    assert "unregistered callers" in data["error"]["message"]
    for header_key in (True, False):
        status, data, _ = await post(
            session, srv, request_body(), key="nope", header_key=header_key
        )
        assert status == 400 and data["error"]["status"] == "INVALID_ARGUMENT"
        assert data["error"]["message"] == "API key not valid. Please pass a valid API key."
        assert data["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        assert data["error"]["details"][0]["domain"] == "googleapis.com"


@pytest.mark.parametrize("model", ["gemini-3-pro-image-preview", "no-such-model"])
async def test_unknown_model(srv: FakeServer, session: aiohttp.ClientSession, model: str) -> None:
    status, data, _ = await post(session, srv, request_body(), model=model)
    assert status == 404 and data["error"]["status"] == "NOT_FOUND"
    message = data["error"]["message"]
    assert message.startswith(f"models/{model} is not found for API version v1beta")


BAD_REQUESTS: dict[str, Any] = {
    "not json": b"{nope",
    "empty contents": {"contents": []},
    "bad ratio": request_body(ratio="7:3"),
    "lower-case size": request_body(size="1k"),
    "15 refs": request_body(refs=[("image/png", png_b64(8, 8))] * 15),
    "bad mime": request_body(refs=[("image/gif", png_b64(8, 8))]),
    "bad base64": request_body(refs=[("image/png", "!!!not base64!!!")]),
    "not an image": request_body(refs=[("image/png", base64.b64encode(b"hello").decode())]),
    "two candidates": request_body(candidateCount=2),
    "unknown field": request_body(safetySettings=[]),
    "bad modality": request_body(modalities=["image"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_validation(srv: FakeServer, session: aiohttp.ClientSession, case: str) -> None:
    status, data, _ = await post(session, srv, BAD_REQUESTS[case])
    assert status == 400, data
    assert data["error"]["status"] == "INVALID_ARGUMENT" and data["error"]["code"] == 400
    if case in ("bad base64", "not an image"):
        assert "Unable to process input image" in data["error"]["message"]


async def test_flash_rejects_image_size(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    status, _, _ = await post(session, srv, request_body(size="1K"), model=FLASH)
    assert status == 400


async def test_too_large(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.max_request_bytes = 1000
    status, data, _ = await post(session, srv, request_body("x" * 2000))
    assert status == 413 and "payload size exceeds the limit" in data["error"]["message"]


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "status"),
    [
        ("500", 500, "INTERNAL"),
        ("503", 503, "UNAVAILABLE"),
        ("504", 504, "DEADLINE_EXCEEDED"),
        ("408", 408, None),
        ("400", 400, "INVALID_ARGUMENT"),
        ("429_bare", 429, "RESOURCE_EXHAUSTED"),
    ],
)
async def test_error_faults(
    srv: FakeServer, session: aiohttp.ClientSession, fault: str, code: int, status: str | None
) -> None:
    srv.config.script = [fault]
    got, data, resp = await post(session, srv, request_body())
    assert got == code
    assert data["error"]["code"] == code
    if status:
        assert data["error"]["status"] == status
    if fault == "503":
        assert data["error"]["message"] == "The model is overloaded. Please try again later."
    if fault == "429_bare":
        assert data["error"]["details"] == [] and "Retry-After" not in resp.headers
        assert "retry in" not in data["error"]["message"]


async def test_429_faults(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.script = ["429", "429_retry_after", "429_daily"]
    _, data, _ = await post(session, srv, request_body())
    err = data["error"]
    assert err["status"] == "RESOURCE_EXHAUSTED" and "Please retry in 0.05s." in err["message"]
    types = {d["@type"]: d for d in err["details"]}
    assert types["type.googleapis.com/google.rpc.RetryInfo"]["retryDelay"] == "0.05s"
    quota = types["type.googleapis.com/google.rpc.QuotaFailure"]["violations"][0]["quotaId"]
    assert "PerMinute" in quota

    _, data, resp = await post(session, srv, request_body())
    assert resp.headers["Retry-After"] == "1"  # whole seconds, like real proxies
    assert "retry in" not in data["error"]["message"]
    assert not any("RetryInfo" in d["@type"] for d in data["error"]["details"])

    _, data, _ = await post(session, srv, request_body())
    types = {d["@type"]: d for d in data["error"]["details"]}
    assert "type.googleapis.com/google.rpc.RetryInfo" not in types
    quota = types["type.googleapis.com/google.rpc.QuotaFailure"]["violations"][0]["quotaId"]
    assert quota == "GenerateRequestsPerDayPerProjectPerModel"


async def test_html_faults(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.script = ["502_html", "200_html"]
    for code in (502, 200):
        status, data, resp = await post(session, srv, request_body())
        assert status == code
        assert resp.headers["Content-Type"].startswith("text/html")
        assert isinstance(data, bytes) and b"<html" in data.lower()


async def test_drop_and_truncate(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.script = ["drop"]
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await post(session, srv, request_body())
    srv.config.script = ["truncate"]
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(session, srv, request_body())
    status, _, _ = await post(session, srv, request_body())
    assert status == 200
    assert srv.stats.by_status == {0: 1, 200: 2}
    # Truncated answers were generated, so they are billed; dropped ones were not.
    assert srv.stats.billed_images == 2


async def test_slow(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.slow_s = 0.3
    srv.config.script = ["slow"]
    start = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await post(session, srv, request_body("patience"), timeout=0.1)
    assert time.monotonic() - start < 0.3  # gave up before the answer came
    # The service finishes the work after the client gave up: paid for, never received.
    await asyncio.sleep(0.35)
    assert srv.stats.billed_prompts == {"patience": 1}


async def test_latency_billed_after_client_gives_up(
    srv: FakeServer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    srv.config.latency_s = 0.5
    start = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await post(session, srv, request_body("walked away"), timeout=0.1)
    assert time.monotonic() - start < 0.5
    assert srv.stats.requests == 1 and srv.stats.billed_images == 0  # still "generating"
    # The service finishes the generation and bills it although nobody is there to receive it.
    for _ in range(100):  # up to 2 s
        if srv.stats.billed_images and not srv.stats.in_flight:
            break
        await asyncio.sleep(0.02)
    st = srv.stats
    assert st.billed_prompts == {"walked away": 1}
    assert st.billed_images == 1 and st.billed_usd == pytest.approx(0.134)
    assert st.requests == 1 and st.prompts == {"walked away": 1}
    assert st.by_status == {0: 1}  # billed, but no answer went out
    # A client hanging up is not a server error: aiohttp logged no traceback for it.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_latency_applies_to_errors(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.latency_s = 0.5
    start = time.monotonic()
    status, _, _ = await post(session, srv, request_body(ratio="7:3"))
    assert status == 400 and time.monotonic() - start >= 0.5
    # Who is calling and for which model are answered at once, as the service does (issue 24).
    for wrong in ({"key": "wrong"}, {"key": None}, {"model": "gemini-nope"}):
        start = time.monotonic()
        status, _, _ = await post(session, srv, request_body(), **wrong)  # type: ignore[arg-type]
        assert status in (400, 401, 403, 404) and time.monotonic() - start < 0.4, wrong
    assert srv.stats.billed_images == 0


async def test_no_image_answers(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.script = ["block", "image_safety", "text_only"]
    _, data, _ = await post(session, srv, request_body())
    assert data["promptFeedback"]["blockReason"] == "SAFETY" and "candidates" not in data
    assert data["usageMetadata"]["promptTokenCount"] > 0
    _, data, _ = await post(session, srv, request_body())
    assert data["candidates"][0]["finishReason"] == "IMAGE_SAFETY"
    assert "content" not in data["candidates"][0]
    _, data, _ = await post(session, srv, request_body())
    cand = data["candidates"][0]
    assert cand["finishReason"] == "STOP"
    assert [set(p) for p in cand["content"]["parts"]] == [{"text"}]
    assert srv.stats.billed_images == 0


async def test_every_fault_name_served(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.slow_s = 0.01
    for fault in FAULT_NAMES:
        srv.config.script = [fault]
        try:
            await post(session, srv, request_body(f"p {fault}"))
        except aiohttp.ClientError:
            pass
    assert set(srv.stats.faults) == set(FAULT_NAMES)
    with pytest.raises(ValueError, match="unknown fault"):
        FakeConfig(script=["nope"])


async def test_rules_script_rates(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.rules = [Rule("cursed", "503", times=2), Rule("doomed", "400")]
    srv.config.script = ["500", "ok", "504"]
    codes = [
        (await post(session, srv, request_body(p)))[0]
        for p in [
            "a cursed cat",
            "a cat",
            "a cursed cat",
            "a cursed cat",
            "doomed",
            "a dog",
            "a dog",
            "doomed",
        ]
    ]
    assert codes == [503, 500, 503, 200, 400, 504, 200, 400]

    srv.config.faults = {"503": 1.0}
    assert (await post(session, srv, request_body()))[0] == 503

    async def run(seed: int) -> list[int]:
        srv.config.faults = {"500": 0.3, "503": 0.3}
        srv.config.script = []  # a new list: nothing for reset() to replay
        srv.config.seed = seed
        srv.reset()
        return [(await post(session, srv, request_body()))[0] for _ in range(30)]

    first = await run(7)
    assert first == await run(7)  # seeded: reproducible
    assert {200, 500, 503} == set(first)


async def test_rpm_sliding_window(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.rpm_limit = 3
    srv.config.rate_window_s = 0.5
    for i in range(3):
        assert (await post(session, srv, request_body()))[0] == 200
        if i == 0:
            first_back = time.monotonic()  # the window's oldest request arrived before this
    asked = time.monotonic()  # and the refused one after this
    status, data, _ = await post(session, srv, request_body())
    assert status == 429
    info = next(d for d in data["error"]["details"] if d["@type"].endswith("RetryInfo"))
    delay = float(info["retryDelay"].rstrip("s"))
    assert re.fullmatch(r"\d+(\.\d{1,9})?s", info["retryDelay"])
    # The delay is until the oldest leaves the window: measured from when the first request was
    # sent, a slow first connection on a busy machine made a right delay look too long.
    assert 0 < delay <= 0.5 - (asked - first_back) + 0.01
    # Rejected requests don't count: after the promised wait exactly one slot is free.
    await asyncio.sleep(delay + 0.01)
    assert (await post(session, srv, request_body()))[0] == 200
    assert srv.stats.faults["rate_limit_rpm"] == 1


async def test_ipm_limit(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.ipm_limit = 2
    srv.config.rate_window_s = 10
    srv.config.script = ["500"]  # an error delivers no image, so it doesn't use image quota
    codes = [(await post(session, srv, request_body()))[0] for _ in range(4)]
    assert codes == [500, 200, 200, 429]


@pytest.mark.parametrize("mode", ["file_data", "text", "markdown", "escaped", "data"])
async def test_url_output(srv: FakeServer, session: aiohttp.ClientSession, mode: str) -> None:
    srv.config.url_output = mode
    _, data, _ = await post(session, srv, request_body(ratio="2:3", modalities=["IMAGE"]))
    parts = [p for p in data["candidates"][0]["content"]["parts"] if not p.get("thought")]
    assert not any("inlineData" in p for p in parts)
    if mode == "file_data":
        url = parts[-1]["fileData"]["fileUri"]
    else:
        text = parts[-1]["text"]
        if mode == "escaped":
            assert "\\u0026" in text and "&" not in text
            text = text.replace("\\u0026", "&")
        url = text if mode == "text" else re.fullmatch(r"!\[image\]\((.+)\)", text)[1]  # type: ignore[index]
    if mode == "data":
        raw = base64.b64decode(url.split(",", 1)[1])
    else:
        assert url.startswith(srv.url + "/_fake/files/")
        async with session.get(url) as resp:
            assert resp.status == 200
            raw = await resp.read()
    assert_ratio(decode(raw), "2:3")
    assert srv.stats.requests == 1  # file downloads are not generateContent calls


async def test_mislabelled_jpeg(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.mislabel_jpeg_rate = 1.0
    _, data, _ = await post(session, srv, request_body(ratio="4:3"))
    mime, raw = final_image(data)
    assert mime == "image/png" and raw.startswith(b"\xff\xd8\xff")
    assert_ratio(decode(raw), "4:3")


# -- stats and control -----------------------------------------------------------------------


async def test_stats(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    srv.config.latency_s = 0.1
    srv.config.rules = [Rule("bad", "503")]
    prompts = ["one", "two", "bad", "two", "big"]
    sizes = {"big": "4K"}
    await asyncio.gather(*(post(session, srv, request_body(p, size=sizes.get(p))) for p in prompts))
    await post(session, srv, request_body(), key="wrong")
    st = srv.stats
    assert st.requests == 6
    assert st.by_status == {200: 4, 503: 1, 400: 1}
    assert st.billed_images == 4
    assert st.billed_usd == pytest.approx(3 * 0.134 + 0.24)
    assert st.prompts == {"one": 1, "two": 2, "bad": 1, "big": 1}
    assert st.billed_prompts == {"one": 1, "two": 2, "big": 1}
    assert st.faults == {"ok": 4, "503": 1}
    assert st.max_in_flight >= 4
    json.dumps(st.snapshot())
    st.reset()
    assert st.requests == 0 and st.billed_prompts == {}


async def test_control_endpoints(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    async with session.post(
        f"{srv.url}/_fake/config",
        json={
            "script": ["500"],
            "rules": [{"match": "zap", "fault": "503", "times": 1}],
            "thought_images": 2,
        },
    ) as resp:
        assert resp.status == 200
    assert srv.config.thought_images == 2 and srv.config.rules == [Rule("zap", "503", 1)]
    assert [(await post(session, srv, request_body(p)))[0] for p in ("zap", "zap", "x")] == [
        503,
        500,
        200,
    ]
    async with session.get(f"{srv.url}/_fake/stats") as resp:
        snap = await resp.json()
    assert snap["requests"] == 3 and snap["by_status"] == {"200": 1, "500": 1, "503": 1}
    assert snap["faults"] == {"503": 1, "500": 1, "ok": 1}

    async with session.post(f"{srv.url}/_fake/reset") as resp:
        assert resp.status == 200
    assert srv.stats.requests == 0
    # Reset replays the script and re-arms the rules, like a fresh server with this config.
    assert [(await post(session, srv, request_body(p)))[0] for p in ("zap", "zap")] == [503, 500]

    for bad in ({"nope": 1}, {"script": ["boom"]}, {"url_output": "ftp"}):
        async with session.post(f"{srv.url}/_fake/config", json=bad) as resp:
            assert resp.status == 400
    assert srv.config.url_output is None


def test_threaded_server_with_urllib() -> None:
    cfg = FakeConfig(api_key="k2", script=["503"])
    with ThreadedFakeServer(cfg) as server:
        url = f"{server.url}/v1beta/models/{MODEL}:generateContent?key=k2"
        payload = json.dumps(request_body("threaded")).encode()

        def call() -> tuple[int, dict[str, Any]]:
            req = urllib.request.Request(
                url, data=payload, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        assert call()[0] == 503
        status, data = call()
        assert status == 200 and final_image(data)[0] == "image/png"
        assert server.stats.requests == 2 and server.stats.billed_prompts == {"threaded": 1}
        with urllib.request.urlopen(f"{server.url}/_fake/stats", timeout=5) as resp:
            assert json.loads(resp.read())["billed_images"] == 1
        server.reset()
        assert server.stats.requests == 0
        assert call()[0] == 503  # the script replays after a reset
    assert server.url


def test_run_forever_subprocess() -> None:
    code = (
        "from batchgen.fake import FakeConfig, run_forever; "
        "run_forever(FakeConfig(), '127.0.0.1', 0)"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            pattern = r"fake Gemini server listening on (http://127\.0\.0\.1:\d+)\n"
            match = re.fullmatch(pattern, line)
            assert match, line
            with urllib.request.urlopen(f"{match[1]}/_fake/stats", timeout=5) as resp:
                assert json.loads(resp.read())["requests"] == 0
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
