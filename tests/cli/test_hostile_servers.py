"""Issue 10, hostile servers, the budget table and inputs: every case through the CLI.

The misbehaving servers are small aiohttp apps on 127.0.0.1 (``Hostile``), each in its own
thread; where a case needs real answers, they forward to the fake Gemini server, whose billing is
then checked against the ledger.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from PIL import Image

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import SECRET, clean_env, cli, ledger_lines, run_against, write_manifest
from tests.helpers.hostile import Handler, Hostile, MiB, run_measured


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    srv = Hostile().start()
    yield srv
    srv.stop()


@pytest.fixture
def hostile2() -> Iterator[Hostile]:
    srv = Hostile().start()
    yield srv
    srv.stop()


def forward_to(fake: ThreadedFakeServer) -> Handler:
    """A handler that passes the request to the fake server and its answer back."""

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in (
            "content-type", "x-goog-api-key")}
        async with aiohttp.ClientSession() as session, session.post(
            fake.url + request.path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            return web.Response(status=resp.status, body=data, content_type="application/json")

    return handler


def billed_matches_ledger(fake: ThreadedFakeServer, out: Path) -> float:
    """Every image the fake billed is in the ledger once, charged at least what the fake
    charged (the fake bills the image; the ledger adds text and prompt tokens). The spend."""
    records = ledger_lines(out)
    spent = round(sum(float(r["cost_usd"]) for r in records), 6)  # type: ignore[arg-type]
    billed = fake.stats.billed_prompts
    charged = Counter(str(r["prompt"]) for r in records
                      if float(r["cost_usd"]) > 0)  # type: ignore[arg-type]
    # Each billed image has its own charged ledger line: nothing paid for went unrecorded.
    assert all(charged[p] >= n for p, n in billed.items()), (billed, charged)
    assert spent >= fake.stats.billed_usd - 1e-6, (spent, fake.stats)
    return spent


# -- 7: a partial --prices override ---------------------------------------------------------


def test_partial_price_override_keeps_the_other_sizes(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text('{"gemini-3-pro-image": {"image_tokens": {"1K": 500, "2K": 500}}}')
    m = write_manifest(tmp_path / "m.yaml", [f"a 4K view {i}" for i in range(6)],
                       image_size="4K")
    est = cli("estimate", m, "--prices", prices, "--out", tmp_path / "e", "--json")
    assert est.code == 0, est.output
    rows = json.loads(est.stdout)["rows"]
    unit = next(r["unit_usd"] for r in rows if r["item"].startswith("image") and
                r["image_size"] == "4K")
    assert unit == pytest.approx(2000 * 120 / 1e6)  # the table's 4K price, not the 1K override

    out = tmp_path / "run"
    r = run_against(server, m, out, "--prices", prices, "--budget", "0.80",
                    "--concurrency", "6")
    assert r.code == 3, r.output
    spent = billed_matches_ledger(server, out)
    assert 0 < spent <= 0.80


def test_a_model_or_size_without_a_price_is_refused(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gemini-3-pro-image-preview": {"output_image_per_1m": 60},
                                  "gemini-9": {"output_image_per_1m": 1, "output_text_per_1m": 1,
                                               "input_per_1m": 1, "input_image_tokens": 1,
                                               "image_tokens": {"1K": 10}}}))
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"jobs": [
        {"prompt": "a", "model": "gemini-9", "image_size": "4K"},
        {"prompt": "b", "model": "gemini-10"},
        {"prompt": "c", "model": "gemini-3-pro-image-preview", "image_size": "4K"},
    ]}))
    for command in ("run", "estimate"):
        r = (run_against(server, m, tmp_path / "run", "--prices", prices) if command == "run"
             else cli("estimate", m, "--prices", prices, "--out", tmp_path / "run"))
        assert r.code == 2, r.output
        lines = r.stderr.strip().splitlines()
        # The model table (with --prices' models in it) refuses both at validation (issue 20).
        assert (f"batchgen: {m}:2: image_size: 4K is not offered by gemini-9 (its sizes: 1K)"
                in r.stderr), r.stderr
        assert f"batchgen: {m}:5: model: unknown model 'gemini-10'" in r.stderr
        assert len(lines) == 2 and "Traceback" not in r.stderr  # preview kept its 4K price
    assert server.stats.requests == 0
    assert not (tmp_path / "run").exists()


# -- 12: the key never follows a redirect ---------------------------------------------------


@pytest.mark.parametrize(("provider", "status"), [("google", 307), ("anyfast", 308),
                                                  ("google", 301)])
def test_the_key_never_follows_a_redirect(
    hostile: Hostile, hostile2: Hostile, tmp_path: Path, provider: str, status: int
) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        target = f"{hostile2.url}{request.path}?key=planted-by-hostile"
        return web.Response(status=status, headers={"Location": target})

    async def record(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500)

    hostile.handler, hostile2.handler = redirect, record
    m = write_manifest(tmp_path / "m.yaml", ["a cat", "a dog", "a cow"])
    out = tmp_path / "run"
    r = cli("run", m, "--out", out, "--base-url", hostile.url, "--provider", provider,
            "--no-progress", "--backoff", "0.01", "--concurrency", "3", "-v",
            env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert r.code == 4, r.output
    assert hostile2.seen == [] and hostile2.keys_seen() == []
    assert len(hostile.seen) == 1  # the redirect is an answer: the run stops after it
    assert f"the API endpoint redirected to {hostile2.url}/v1beta/models/" in r.stderr
    assert "key=REDACTED" in r.stderr and "planted-by-hostile" not in r.stderr
    assert SECRET not in r.output
    assert ledger_lines(out) == []  # nothing was billed; the jobs stay pending


def test_url_references_follow_redirects_without_the_key(
    server: ThreadedFakeServer, hostile: Hostile, hostile2: Hostile, tmp_path: Path
) -> None:
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png, "PNG")

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": f"{hostile2.url}/real.png"})

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=png.getvalue(), content_type="image/png")

    hostile.handler, hostile2.handler = redirect, serve
    m = write_manifest(tmp_path / "m.yaml", ["put it on a table"],
                       images=[f"{hostile.url}/ref.png"])
    for provider in ("google", "anyfast"):
        out = tmp_path / provider
        r = run_against(server, m, out, provider=provider)
        assert r.code == 0, r.output
        billed_matches_ledger(server, out)
        assert server.stats.billed_images == 1
        server.stats.reset()
    assert [s["path"] for s in hostile2.seen] == ["/real.png", "/real.png"]
    assert hostile.keys_seen() == [] and hostile2.keys_seen() == []


# -- 14: the server's requested waits are bounded -------------------------------------------


def test_a_long_retry_after_on_503_stops_the_run_with_when_to_resume(
    hostile: Hostile, tmp_path: Path
) -> None:
    async def outage(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"code": 503, "message": "overloaded",
                                            "status": "UNAVAILABLE"}},
                                 status=503, headers={"Retry-After": "86400"})

    hostile.handler = outage
    m = write_manifest(tmp_path / "m.yaml", ["a cat", "a dog"])
    t0 = time.monotonic()
    r = cli("run", m, "--out", tmp_path / "run", "--base-url", hostile.url, "--no-progress",
            "--backoff", "0.01", env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=60)
    assert r.code == 4, r.output
    assert time.monotonic() - t0 < 30  # not a day, nor 6 attempts of backoff
    assert "server_wait" in r.stderr and "asks to wait 86400s" in r.stderr
    assert "resume after" in r.stderr
    assert len(hostile.seen) == 1
    assert ledger_lines(tmp_path / "run") == []


def test_an_unparsable_retry_after_is_treated_as_absent(
    server: ThreadedFakeServer, hostile: Hostile, tmp_path: Path
) -> None:
    forward = forward_to(server)
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] <= 2:
            value = "NaN" if calls["n"] == 1 else "soon"
            return web.Response(status=503, text="busy", headers={"Retry-After": value})
        return await forward(request)

    hostile.handler = flaky
    m = write_manifest(tmp_path / "m.yaml", ["a cat", "a dog"])
    out = tmp_path / "run"
    r = cli("run", m, "--out", out, "--base-url", hostile.url, "--provider", "google",
            "--no-progress", "--backoff", "0.01", "--concurrency", "1", "-v",
            env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=60)
    assert r.code == 0, r.output
    waits = [float(line.rsplit("retrying in ", 1)[1].rstrip("s"))
             for line in r.stderr.splitlines() if "retrying in " in line]
    assert len(waits) == 2 and all(0 <= w < 2 for w in waits), waits  # backoff, not NaN
    billed_matches_ledger(server, out)
    assert server.stats.billed_images == 2


# -- 13: bodies are bounded -----------------------------------------------------------------

ANSWER_CAP = 256 * MiB  # batchgen.http_body.ANSWER_MAX_BYTES, derived there


def endless(gzip: bool) -> Handler:
    """A 200 whose body never ends: plain zeros, or a gzip stream of zeros (a bomb)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        headers = {"Content-Type": "application/json"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = b"0" * MiB
        head = b'{"candidates": ['
        await resp.write(packer.compress(head) if gzip else head)
        try:
            while True:
                # 1 MiB of zeros is about 1 KiB gzipped: 5 GB inflated is only 5 MB on the wire.
                await resp.write(packer.compress(block) + packer.flush(zlib.Z_SYNC_FLUSH)
                                 if gzip else block)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    return handler


@pytest.mark.parametrize("gzip", [False, True], ids=["endless-body", "gzip-bomb"])
def test_an_endless_or_inflating_answer_is_capped(
    hostile: Hostile, tmp_path: Path, gzip: bool
) -> None:
    hostile.handler = endless(gzip)
    m = write_manifest(tmp_path / "m.yaml", ["a cat"])
    out = tmp_path / "run"
    code, stderr, peak = run_measured(
        ["run", m, "--out", out, "--base-url", hostile.url, "--no-progress", "--backoff", "0.01",
         "--timeout", "60"], env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert code == 1, stderr
    (rec,) = ledger_lines(out)
    err = rec["error"]
    assert isinstance(err, dict)
    assert err["kind"] == "bad_response" and "larger than the 256 MiB cap" in err["message"]
    assert err["retryable"] is False and rec["attempts"] == 1  # not retried (retrying.py)
    assert len(hostile.seen) == 1
    # A 200 may have been billed: charged at the table price, as other cut-off 200s are.
    assert float(rec["cost_usd"]) > 0  # type: ignore[arg-type]
    # The process's own peak: the interpreter (~100 MB) plus at most the cap, never gigabytes.
    print(f"peak RSS {peak / MiB:.0f} MiB")
    assert peak < ANSWER_CAP + 150 * MiB, f"peak RSS {peak / MiB:.0f} MiB"


def test_an_endless_url_output_is_capped(hostile: Hostile, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            await request.read()
            return web.json_response({
                "candidates": [{"content": {"parts": [{"fileData": {
                    "mimeType": "image/png", "fileUri": f"{hostile.url}/out/img.png"}}]},
                    "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1120,
                                  "candidatesTokensDetails": [{"modality": "IMAGE",
                                                               "tokenCount": 1120}]}})
        resp = web.StreamResponse(status=200, headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        await resp.write(b"\x89PNG\r\n\x1a\n")
        try:
            while True:
                await resp.write(b"\0" * MiB)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    hostile.handler = handler
    m = write_manifest(tmp_path / "m.yaml", ["a cat"])
    out = tmp_path / "run"
    r = cli("run", m, "--out", out, "--base-url", hostile.url, "--no-progress",
            "--backoff", "0.01", env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=60)
    assert r.code == 1, r.output
    (rec,) = ledger_lines(out)
    err = rec["error"]
    assert isinstance(err, dict) and err["kind"] == "bad_response"
    assert str(err["message"]).startswith(
        f"the image at {hostile.url}/out/img.png is larger than the 64 MiB cap"), err
    assert err["retryable"] is False and rec["attempts"] == 1
    assert [s["method"] for s in hostile.seen] == ["POST", "GET"]  # neither retried
    assert float(rec["cost_usd"]) == pytest.approx(1120 * 120 / 1e6 + 10 * 2 / 1e6)  # its usage


def test_an_endless_url_reference_is_capped(
    server: ThreadedFakeServer, hostile: Hostile, tmp_path: Path
) -> None:
    async def endless_png(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        await resp.write(b"\x89PNG\r\n\x1a\n")
        try:
            while True:
                await resp.write(b"\0" * MiB)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    hostile.handler = endless_png
    m = write_manifest(tmp_path / "m.yaml", ["a cat on it"], images=[f"{hostile.url}/r.png"])
    out = tmp_path / "run"
    r = run_against(server, m, out, "--reference-timeout", "60")
    assert r.code == 1, r.output
    (rec,) = ledger_lines(out)
    err = rec["error"]
    assert isinstance(err, dict) and err["kind"] == "reference"
    assert "larger than the 100 MiB cap" in err["message"]
    assert server.stats.requests == 0 and rec["cost_usd"] == 0


# -- 15: an oversized reference is bad input, not a traceback --------------------------------


def huge_header_jpeg(path: Path, size: tuple[int, int], pad_to: int) -> Path:
    """A small JPEG whose header claims ``size`` pixels, padded past the request limit so that
    it must be shrunk. Pillow judges the pixel count from the header, as with a real one."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 200)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = size[1].to_bytes(2, "big") + size[0].to_bytes(2, "big")
    path.write_bytes(bytes(data) + b"\0" * (pad_to - len(data)))  # bytes after EOI: ignored
    return path


def test_an_oversized_reference_is_one_line_exit_2(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    huge_header_jpeg(tmp_path / "huge.jpg", (20000, 10000), 21 * MiB)
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n  - prompt: a plain one\n  - prompt: put it on a table\n"
                 "    images: [huge.jpg]\n")
    for r in (cli("validate", m), run_against(server, m, tmp_path / "run")):
        assert r.code == 2, r.output
        assert "Traceback" not in r.output and "DecompressionBomb" not in r.stderr.split(":")[0]
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"batchgen: {m}:4: images: huge.jpg"), line
        assert "too large to decode" in line and "200000000 pixels" in line
    assert server.stats.requests == 0 and not (tmp_path / "run").exists()


# -- 17: a hanging or unreachable URL reference fails its job, named -------------------------


def test_a_hanging_or_unreachable_url_reference_fails_its_job_by_name(
    server: ThreadedFakeServer, hostile: Hostile, tmp_path: Path
) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    hostile.handler = hang
    closed = Hostile().start()
    dead_url = f"{closed.url}/gone.png"
    closed.stop()  # nothing listens on its port any more
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"jobs": [
        {"id": "hangs", "prompt": "on a table", "images": [f"{hostile.url}/slow.png?key=abc"]},
        {"id": "dead", "prompt": "on a chair", "images": [dead_url]},
        *({"prompt": f"plain {i}"} for i in range(3)),
    ]}, sort_keys=False))
    out = tmp_path / "run"
    t0 = time.monotonic()
    r = run_against(server, m, out, "--reference-timeout", "1", "--timeout", "120",
                    "--concurrency", "2")
    assert r.code == 1, r.output
    assert time.monotonic() - t0 < 45  # not --timeout, nor 6 attempts of backoff
    records = {str(rec["prompt"]): rec for rec in ledger_lines(out)}
    hangs, dead = records["on a table"]["error"], records["on a chair"]["error"]
    assert isinstance(hangs, dict) and isinstance(dead, dict)
    assert hangs["kind"] == dead["kind"] == "reference"
    assert hangs["retryable"] is False and records["on a table"]["attempts"] == 0
    rows = [i + 1 for i, text in enumerate(m.read_text().splitlines()) if "- id:" in text]
    assert hangs["message"] == (
        f"{m}:{rows[0]}: images: reference {hostile.url}/slow.png?key=REDACTED: "
        "no answer within 1s (--reference-timeout)")
    assert dead["message"].startswith(f"{m}:{rows[1]}: images: reference {dead_url}: ")
    assert "connection" in dead["message"].lower() or "connect" in dead["message"].lower()
    assert sum(rec["status"] == "succeeded" for rec in records.values()) == 3
    assert len([s for s in hostile.seen if s["path"] == "/slow.png"]) == 1  # not retried
    assert billed_matches_ledger(server, out) > 0
    assert server.stats.billed_images == 3


# -- 18 and 19: --base-url ------------------------------------------------------------------


def test_credentials_in_base_url_are_never_stored(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    password = "pw-9f8e7d6c-secret"
    host = server.url.split("://", 1)[1]
    base = f"http://batch-user:{password}@{host}"
    server.config.script = ["503"]  # a retry, so that -v logs a failed attempt too
    m = write_manifest(tmp_path / "m.yaml", ["a cat", "a dog"])
    out = tmp_path / "run"
    r = cli("run", m, "--out", out, "--base-url", base, "--provider", "google", "--no-progress",
            "--backoff", "0.01", "-v", env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert r.code == 0, r.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["base_url"] == f"http://REDACTED@{host}"
    assert "--base-url http://REDACTED@" in meta["command"]
    for path in [p for p in out.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert password.encode() not in data and b"batch-user" not in data, path
        assert SECRET.encode() not in data, path
    assert password not in r.output and "batch-user" not in r.output and SECRET not in r.output
    billed_matches_ledger(server, out)
    assert server.stats.billed_images == 2


@pytest.mark.parametrize("base", ["http://127.0.0.1:99999", "127.0.0.1:8080", "http://",
                                  "ftp://example.com", "http://u:pw-secret@127.0.0.1:70000"])
def test_a_malformed_base_url_is_refused_before_anything_is_sent(
    tmp_path: Path, base: str
) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a cat"])
    t0 = time.monotonic()
    r = cli("run", m, "--out", tmp_path / "run", "--base-url", base, "--no-progress",
            env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert r.code == 2, r.output
    assert time.monotonic() - t0 < 20
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("batchgen: --base-url: "), line
    assert "pw-secret" not in line
    assert not (tmp_path / "run").exists()


def test_a_malformed_base_url_in_the_manifest_names_it(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("base_url: https://example.com:0x50\njobs:\n  - prompt: a cat\n")
    r = cli("run", m, "--out", tmp_path / "run", "--no-progress",
            env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert r.code == 2, r.output
    assert r.stderr.startswith(f"batchgen: {m}: base_url: 'https://example.com:0x50'"), r.stderr


# -- 16: shrinking does not multiply memory by the concurrency -------------------------------


def big_reference(path: Path, colour: tuple[int, int, int], side: int, pad_to: int) -> Path:
    """A real ``side`` x ``side`` JPEG (it decodes to side^2 x 4 bytes), padded past the
    request limit so it must be decoded and shrunk."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, "JPEG", quality=80)
    path.write_bytes(buf.getvalue() + b"\0" * (pad_to - buf.tell()))
    return path


def test_shrinking_references_holds_one_large_image_at_a_time(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    # 8 distinct 5000 x 5000 references at concurrency 8, as in the issue. One shrink holds the
    # file (21 MB), its pixels (75 MB) and libjpeg's optimising buffers (~150 MB): one at a time
    # the run peaked at 234-421 MiB (the high end in a full suite run, from allocator
    # fragmentation), while a shrink per worker thread holds several of those at once (467 MiB
    # with 4 workers, 1.7 GB with 8 larger images: bench/hostile.py).
    n = 8
    refs = [big_reference(tmp_path / f"r{i}.jpg", (30 * i, 90, 240 - 30 * i), 5000, 21 * MiB)
            for i in range(n)]
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"jobs": [{"prompt": f"use photo {i}", "images": [r.name]}
                                          for i, r in enumerate(refs)]}))
    out = tmp_path / "run"
    code, stderr, peak = run_measured(
        ["run", m, "--out", out, "--base-url", server.url, "--no-progress", "--concurrency",
         str(n)],
        env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=180)
    print(f"peak RSS {peak / MiB:.0f} MiB")
    assert code == 0, stderr
    assert "will be re-encoded as JPEG to fit" in stderr
    assert peak < 520 * MiB, f"peak RSS {peak / MiB:.0f} MiB"
    assert server.stats.billed_images == n
    billed_matches_ledger(server, out)


# -- 20: one request, one job ---------------------------------------------------------------


def test_two_rows_sending_the_same_request_are_a_duplicate(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n"
                 "  - prompt: a cat\n"                              # line 2
                 "  - prompt: a {x}\n"                              # line 3
                 "    vars: {x: [dog, cat]}\n"
                 "  - {prompt: a cow, count: 2}\n"                  # line 5
                 "  - {prompt: a cow, id: named}\n"                 # 6: named: its own job
                 "  - {prompt: a cow, aspect_ratio: '16:9'}\n"      # 7: another request
                 "  - prompt: a {y}\n"                              # line 8
                 "    vars: {y: [cow]}\n")
    for r in (cli("validate", m), run_against(server, m, tmp_path / "run")):
        assert r.code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 2, lines
        assert lines[0].startswith(f"batchgen: {m}:3: duplicate job: sends the same request as "
                                   "line 2 (prompt 'a cat'"), lines[0]
        assert lines[1].startswith(f"batchgen: {m}:8: duplicate job: sends the same request as "
                                   "line 5 (prompt 'a cow'"), lines[1]
    assert server.stats.requests == 0 and not (tmp_path / "run").exists()
    # Without the duplicates, the same manifest runs, one request per job.
    m.write_text(m.read_text().replace("[dog, cat]", "[dog]").replace("[cow]", "[pig]"))
    out = tmp_path / "run"
    r = run_against(server, m, out)
    assert r.code == 0, r.output
    assert server.stats.billed_images == 7 and len(ledger_lines(out)) == 7
    billed_matches_ledger(server, out)
