"""Reading an answer (batchgen/api/response.py): snake case, thought images, image URLs."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from batchgen.api.response import find_image_url, parse_answer


def test_parse_answer_snake_case_and_thoughts() -> None:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    final, interim = buf.getvalue(), b"\x89PNG-interim"
    answer = {"candidates": [{"content": {"parts": [
        {"inline_data": {"mime_type": "image/png", "data": b64(interim)}, "thought": True},
        {"text": "here", "thought_signature": "x"},
        {"inline_data": {"mime_type": "image/png", "data": b64(final)}},
    ]}, "finish_reason": "STOP"}], "usage_metadata": {"prompt_token_count": 3}}
    parsed = parse_answer(answer)
    assert parsed.data == final
    assert parsed.text == "here"
    assert parsed.usage == {"prompt_token_count": 3}
    assert parsed.dropped_thought_images == 1


@pytest.mark.parametrize(("text", "url"), [
    ("![img](https://x.test/a.png?a=1\\u0026b=2)", "https://x.test/a.png?a=1&b=2"),
    ("Here: https://x.test/b.png.", "https://x.test/b.png"),
    ("no url here", None),
])
def test_find_image_url(text: str, url: str | None) -> None:
    assert find_image_url(text) == url
