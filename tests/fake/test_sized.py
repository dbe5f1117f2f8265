"""Realistic answer sizes (issue 25): real pixel sizes, a chosen byte size, distinct bytes in
every answer, live and in batch results files (on disk), and ``fake-server --image-bytes``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from PIL import Image

from batchgen import spec
from batchgen.fake import FakeConfig, ThreadedFakeServer
from batchgen.fake.sized import DISTINCT_BYTES, SizedPng
from tests.fake.test_batch import Http, file_batch, request_line, results, wait_done
from tests.helpers.cli import SECRET, cli


def test_sized_png_hits_the_size_decodes_and_differs_every_time() -> None:
    png = SizedPng(640, 480, 300_000, seed=1)
    seen = set()
    for _ in range(3):
        data, b64 = png.fresh()
        assert base64.b64decode(b64) == data  # the cached head's base64 + the tail's
        assert abs(len(data) - 300_000) < 3_000
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (640, 480) and img.mode == "RGB"
            img.load()  # every row, CRCs and Adler-32 checked by the decoder
            assert img.getpixel((5, 479)) != img.getpixel((5, 0))  # noise below the flat top
        seen.add(hashlib.sha256(data[-DISTINCT_BYTES:]).hexdigest())
    assert len(seen) == 3


def test_sized_png_smaller_than_its_noise_and_larger_than_raw() -> None:
    tiny, _ = SizedPng(32, 32, 100, seed=2).fresh()  # all rows distinct: the least it can be
    with Image.open(io.BytesIO(tiny)) as img:
        img.load()
    big, _ = SizedPng(100, 100, 10**7, seed=3).fresh()  # capped at every row random
    assert 30_000 < len(big) < 31_000
    with Image.open(io.BytesIO(big)) as img:
        img.load()


@pytest.fixture
def fake() -> Iterator[ThreadedFakeServer]:
    cfg = FakeConfig(api_key=SECRET, batch_seconds=0.2, image_bytes=120_000, thought_images=0)
    with ThreadedFakeServer(cfg) as srv:
        yield srv


def test_batch_results_carry_distinct_sized_images(fake: ThreadedFakeServer) -> None:
    http = Http(fake.url, SECRET)
    lines = [request_line(f"k{i}", "the same prompt", image_config={"aspect_ratio": "4:3"})
             for i in range(4)]
    op = wait_done(http, file_batch(http, lines))
    got = results(http, op)
    images = []
    for line in got:
        parts = line["response"]["candidates"][0]["content"]["parts"]
        data = base64.b64decode(next(p for p in parts if "inlineData" in p)["inlineData"]["data"])
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            assert img.size == spec.output_pixels("4:3", "1K")  # the real table
        assert abs(len(data) - 120_000) < 1 + 3 * 1200  # within a row of the size asked
        images.append(data)
    assert len({hashlib.sha256(d).digest() for d in images}) == 4


def test_fake_server_command_takes_image_bytes() -> None:
    r = cli("fake-server", "--image-bytes", "lots")
    assert r.code == 2 and "--image-bytes" in r.output
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "fake-server", "--port", "0", "--image-bytes",
         "0.25MB"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" ", 1)[1].strip()
        with urllib.request.urlopen(url + "/_fake/config", timeout=10) as resp:
            assert json.loads(resp.read())["image_bytes"] == 250_000
    finally:
        proc.terminate()
        proc.wait(timeout=10)
