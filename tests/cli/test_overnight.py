"""Hangs and fatal errors at high concurrency, and answers nothing expected.

Subprocess CLI against the fake server (or a tiny stand-in HTTP server where the fake cannot
produce the answer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import SECRET, clean_env, write_manifest
from tests.helpers.servers import _serve


@pytest.fixture
def odd_proxy() -> Iterator[str]:
    """A proxy answering HTTP 200 with an error object whose code is null."""
    body = json.dumps({"error": {"code": None, "message": "upstream error"}}).encode()

    class Odd(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    yield from _serve(Odd)


def _cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchgen", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_fatal_error_with_rpm_exits_promptly(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"p {i}" for i in range(10)])
    args = ["run", str(m), "--out", str(tmp_path / "run"), "--base-url", server.url,
            "--no-progress", "--rpm", "1", "--concurrency", "2"]
    # One request, a 400 API_KEY_INVALID, then the second worker waits 60 s for an --rpm slot
    # it will never use (concurrency 32 at --rpm 1: half an hour).
    r = _cli(args, clean_env(BATCHGEN_API_KEY="wrong-key"), timeout=20)  # the --rpm slot it must not wait for is 60 s away
    assert r.returncode == 4
    assert server.stats.requests == 1


def test_wrong_key_costs_one_request_when_the_first_job_fails_before_sending(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    gone = server.url + "/_fake/files/expired.png"  # a reference URL that answers 404
    jobs = [{"prompt": "edit this", "images": [gone]}, *({"prompt": f"p {i}"} for i in range(40))]
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"jobs": jobs}))
    args = ["run", str(m), "--out", str(tmp_path / "run"), "--base-url", server.url,
            "--no-progress", "--concurrency", "32"]
    r = _cli(args, clean_env(BATCHGEN_API_KEY="wrong-key"), timeout=20)
    assert r.returncode == 4, r.stderr
    assert server.stats.requests == 1  # today: 32


def test_an_unexpected_answer_never_hangs_the_run(odd_proxy: str, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"p {i}" for i in range(20)])
    args = ["run", str(m), "--out", str(tmp_path / "run"), "--base-url", odd_proxy,
            "--no-progress", "--concurrency", "2", "--max-attempts", "1"]
    r = _cli(args, clean_env(BATCHGEN_API_KEY=SECRET), timeout=20)  # "never hangs": far below --timeout (300 s), with room for a loaded machine
    assert r.returncode in (1, 4), r.stderr
