"""The fake server's quota limiter: sliding and fixed windows, capacity 429s, its CLI flags."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from batchgen.fake import FakeConfig, FakeServer
from batchgen.fake.faults import FixedWindow, SlidingWindow

# -- the fake's limiter --------------------------------------------------------------------


def test_fake_limiter_windows_sliding_and_fixed() -> None:
    sliding, fixed = SlidingWindow(), FixedWindow()
    for t in (10.1, 10.5):
        assert sliding.wait(t, 2, 1.0) == 0.0
        sliding.add(t)
        assert fixed.wait(t, 2, 1.0) == 0.0
        fixed.add(t, 1.0)
    # Sliding: full until the oldest leaves the last second; fixed: until the next boundary.
    assert sliding.wait(10.9, 2, 1.0) == pytest.approx(0.2)
    assert fixed.wait(10.9, 2, 1.0) == pytest.approx(0.1)
    assert fixed.wait(11.0, 2, 1.0) == 0.0
    assert sliding.wait(11.0, 2, 1.0) == pytest.approx(0.1)


async def test_fake_capacity_429s_carry_no_retry_info() -> None:
    config = FakeConfig(rpm_limit=1, rate_window_s=3600, rate_window_kind="fixed",
                        rate_limit_style="capacity", faults={})
    async with FakeServer(config) as srv, aiohttp.ClientSession() as session:
        url = f"{srv.url}/v1beta/models/gemini-3-pro-image:generateContent"
        body = {"contents": [{"parts": [{"text": "a cube"}]}]}
        headers = {"x-goog-api-key": "fake-key"}
        codes = []
        for _ in range(2):
            async with session.post(url, json=body, headers=headers) as resp:
                codes.append(resp.status)
                data = await resp.json()
        assert codes == [200, 429]
        assert data["error"]["message"] == "Resource exhausted, please try again later."
        assert not data["error"].get("details") and "Retry-After" not in resp.headers
        srv.config.rpm_limit = None
        srv.config.faults = {"429_capacity": 1.0}
        async with session.post(url, json=body, headers=headers) as resp:
            assert resp.status == 429
            assert "RetryInfo" not in await resp.text()
        assert [s for _, s in srv.stats.timeline] == [200, 429, 429]


def test_fake_server_cli_takes_the_limiter_flags(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "fake-server", "--port", "0", "--rpm", "2",
         "--rate-window", "10", "--rate-window-kind", "fixed", "--rate-limit-style", "capacity"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().rsplit(" ", 1)[1].strip()
        with urllib.request.urlopen(url + "/_fake/config", timeout=10) as resp:
            config = json.loads(resp.read())
        assert (config["rpm_limit"], config["rate_window_s"], config["rate_window_kind"],
                config["rate_limit_style"]) == (2, 10.0, "fixed", "capacity")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
