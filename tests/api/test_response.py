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


@pytest.mark.parametrize("fast", [True, False], ids=["pybase64", "stdlib"])
def test_decode_b64_strict_lenient_and_bad(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from batchgen.api import response
    from batchgen.errors import BadResponseError

    if not fast:  # what runs where pybase64 is not installed
        monkeypatch.setattr(response, "_fast_b64decode", None)
    else:
        assert response._fast_b64decode is not None
    data = os.urandom(3000)
    text = base64.b64encode(data).decode()
    assert response.decode_b64(text) == data
    # Line breaks (MIME style) are not strict base64: the lenient decoder takes them.
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert response.decode_b64(wrapped) == data
    with pytest.raises(BadResponseError, match="not valid base64"):
        response.decode_b64(text[:-1])  # a length no base64 can have
