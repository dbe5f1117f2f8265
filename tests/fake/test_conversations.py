"""The fake's side of chains (issue 22), over real HTTP: a distinct thoughtSignature per
answer, a stamp in every image naming its answer, and per request the turns, the signatures of
its own that came back and the images of its own a request carried."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
from PIL import Image

from batchgen.fake import FakeServer
from batchgen.fake.stamps import read_stamp, stamp_png

KEY = "fake-key"
URL = "/v1beta/models/gemini-3-pro-image:generateContent"
CONFIG = {"responseModalities": ["TEXT", "IMAGE"]}


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url + URL, json=body, headers={"x-goog-api-key": KEY}) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


def final_parts(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in answer["candidates"][0]["content"]["parts"] if not p.get("thought")]


def image_of(parts: list[dict[str, Any]]) -> bytes:
    import base64

    return base64.b64decode(next(p for p in parts if "inlineData" in p)["inlineData"]["data"])


def test_a_stamp_survives_decoding_and_names_its_answer() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    stamped = stamp_png(buf.getvalue(), {"answer": 7, "prompt": "p"})
    assert read_stamp(stamped) == {"answer": 7, "prompt": "p"}
    with Image.open(io.BytesIO(stamped)) as img:
        img.load()
        assert img.size == (8, 8) and img.getpixel((0, 0)) == (1, 2, 3)
    assert read_stamp(buf.getvalue()) is None


async def test_conversations_record_signatures_and_images_that_came_back() -> None:
    async with FakeServer() as srv, aiohttp.ClientSession() as session:
        first = await post(session, srv.url, {
            "contents": [{"role": "user", "parts": [{"text": "a red teapot"}]}],
            "generationConfig": CONFIG})
        other = await post(session, srv.url, {
            "contents": [{"role": "user", "parts": [{"text": "a blue cup"}]}],
            "generationConfig": CONFIG})
        parts = final_parts(first)
        sigs = [p["thoughtSignature"] for p in parts if "thoughtSignature" in p]
        other_sigs = [p["thoughtSignature"] for p in final_parts(other) if "thoughtSignature" in p]
        assert sigs and other_sigs and not set(sigs) & set(other_sigs)  # one per answer
        stamp = read_stamp(image_of(parts))
        assert stamp is not None and stamp["prompt"] == "a red teapot"
        # The edit: the first turn, the model's answer exactly as received, the instruction;
        # and the other answer's image as a reference of the new turn.
        cup = image_of(final_parts(other))
        import base64

        body = {"contents": [
            {"role": "user", "parts": [{"text": "a red teapot"}]},
            {"role": "model", "parts": parts},
            {"role": "user", "parts": [
                {"text": "now at night"},
                {"inlineData": {"mimeType": "image/png",
                                "data": base64.b64encode(cup).decode()}}]},
        ], "generationConfig": CONFIG}
        edit = await post(session, srv.url, body)
        seen = srv.stats.requests_seen()[-1]
        assert [t["role"] for t in seen["turns"]] == ["user", "model", "user"]
        assert seen["signatures_back"] == [stamp["answer"]] * len(sigs)
        assert seen["foreign_signatures"] == 0
        carried = {(c["role"], c["prompt"]) for c in seen["carried"]}
        assert carried == {("model", "a red teapot"), ("user", "a blue cup")}
        new = read_stamp(image_of(final_parts(edit)))
        assert new is not None and new["turn_prompt"] == "now at night"
        assert new["answer"] not in (stamp["answer"], read_stamp(cup)["answer"])  # type: ignore[index]
        # A signature the fake never issued is counted as foreign, not refused (the image
        # model does not enforce them).
        parts[-1] = {**parts[-1], "thoughtSignature": "bm90LW91cnM="}
        await post(session, srv.url, body)
        assert srv.stats.requests_seen()[-1]["foreign_signatures"] == 1
