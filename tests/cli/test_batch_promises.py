"""Issue 19, cases 5, 8 and 15: batch mode keeps live mode's reference limits and its budget.

Every case runs the CLI as a subprocess against the fake server's Batch API over HTTP; the
hostile reference servers are small aiohttp apps on 127.0.0.1 (tests/helpers/hostile.py).
"""

from __future__ import annotations

import asyncio
import io
import shlex
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from PIL import Image

from batchgen.fake import FakeConfig, ThreadedFakeServer
from tests.helpers.cli import SECRET, clean_env, cli, ledger_lines
from tests.helpers.hostile import Handler, Hostile, MiB, run_measured

BATCH_S = 0.3
REFERENCE_CAP = 100 * MiB  # batchgen.api.http_body.REFERENCE_MAX_BYTES, derived there
# The old code read a reference whole, so the hostile bodies below end after this much: enough
# to be far past the cap, and never enough to take the shared machine's memory.
HOSTILE_TOTAL = 400 * MiB


@pytest.fixture
def bserver() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=BATCH_S)) as srv:
        yield srv


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    srv = Hostile().start()
    yield srv
    srv.stop()


def write_jobs(path: Path, jobs: list[dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump({"provider": "google", "jobs": jobs}, sort_keys=False))
    return path


def batch_args(srv: ThreadedFakeServer, m: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["run", m, "--out", out, "--base-url", srv.url, "--mode", "batch", "--no-progress",
            "--poll-interval", "0.1", *extra]


def brun(srv: ThreadedFakeServer, m: Path, out: Path, *extra: str, timeout: float = 120):  # type: ignore[no-untyped-def]
    return cli(*batch_args(srv, m, out, *extra), env=clean_env(BATCHGEN_API_KEY=SECRET),
               timeout=timeout)


def png_bytes(size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def truncated_png() -> bytes:
    """A PNG whose signature and header are valid and whose pixel data stops half-way."""
    data = png_bytes()
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (96, 64)  # the header alone reads as a good image
    return data[: len(data) // 2]


def endless_png(gzip: bool) -> Handler:
    """A 200 image/png that does not end (within HOSTILE_TOTAL): PNG signature then zeros,
    plain or as a gzip stream of zeros (a bomb: ~1 KiB on the wire per MiB inflated)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "image/png"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        head, block = b"\x89PNG\r\n\x1a\n", b"\0" * MiB
        try:
            await resp.write(packer.compress(head) if gzip else head)
            for _ in range(HOSTILE_TOTAL // MiB):
                await resp.write(packer.compress(block) + packer.flush(zlib.Z_SYNC_FLUSH)
                                 if gzip else block)
            if gzip:
                await resp.write(packer.flush())
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    return handler


def serving(routes: dict[str, Handler]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await routes[request.path](request)

    return handler


# -- 5: batch mode reads URL references with live mode's reader -------------------------------


def test_batch_mode_caps_an_endless_or_inflating_url_reference(
    bserver: ThreadedFakeServer, hostile: Hostile, tmp_path: Path
) -> None:
    hostile.handler = serving({"/endless.png": endless_png(False),
                               "/bomb.png": endless_png(True)})
    m = write_jobs(tmp_path / "m.yaml", [
        {"id": "endless", "prompt": "put it on a table", "images": [f"{hostile.url}/endless.png"]},
        {"id": "bomb", "prompt": "put it on a chair", "images": [f"{hostile.url}/bomb.png"]},
        {"id": "plain", "prompt": "a plain lighthouse"},
    ])
    out = tmp_path / "out"
    t0 = time.monotonic()
    code, stderr, peak = run_measured(
        batch_args(bserver, m, out, "--wait", "--reference-timeout", "60"),
        env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=120)
    elapsed = time.monotonic() - t0
    assert code == 1, stderr
    records = {str(r["job_id"]).split("-")[0]: r for r in ledger_lines(out)}
    for name in ("endless", "bomb"):
        err = records[name]["error"]
        assert isinstance(err, dict) and err["kind"] == "reference", records[name]
        assert "larger than the 100 MiB cap" in str(err["message"]), err
        # The manifest line and the URL, once: "M:3: images: reference URL is larger ..."
        assert f"{m}:" in str(err["message"]), err
        assert str(err["message"]).count(f"{hostile.url}/") == 1, err
        assert records[name]["cost_usd"] == 0
    assert records["plain"]["status"] == "succeeded"
    # Nothing of either reference went up: the one upload is the plain job's request file.
    st = bserver.stats
    assert st.files_uploaded == 1 and st.bytes_uploaded < 64 * 1024, st.snapshot()
    assert st.batch_billed_images == 1
    print(f"peak RSS {peak / MiB:.0f} MiB, {elapsed:.1f}s")
    # The interpreter (~100 MB) plus at most the cap; the old reader held the whole body.
    assert peak < REFERENCE_CAP + 150 * MiB, f"peak RSS {peak / MiB:.0f} MiB"
    assert elapsed < 60  # fails at the cap, not at --reference-timeout


def test_a_truncated_png_reference_is_refused_in_both_modes(
    bserver: ThreadedFakeServer, hostile: Hostile, tmp_path: Path
) -> None:
    cut = truncated_png()
    (tmp_path / "cut.png").write_bytes(cut)
    # A local file: validate, and run in either mode, refuse it before anything is sent.
    local = write_jobs(tmp_path / "local.yaml", [
        {"prompt": "a plain one"}, {"prompt": "put it on a table", "images": ["cut.png"]}])
    line = next(i for i, t in enumerate(local.read_text().splitlines(), 1) if "cut.png" in t) - 1
    for mode in ("live", "batch"):
        r = cli("run", local, "--out", tmp_path / mode, "--base-url", bserver.url,
                "--mode", mode, "--no-progress", env=clean_env(BATCHGEN_API_KEY=SECRET))
        assert r.code == 2, r.output
        (msg,) = r.stderr.strip().splitlines()
        assert msg.startswith(f"batchgen: {local}:{line}: images: cut.png: not a whole image"), msg
        assert "cut short or corrupt" in msg
    v = cli("validate", local)
    assert v.code == 2 and "cut.png: not a whole image" in v.stderr, v.output
    st = bserver.stats
    assert st.requests == 0 and st.files_uploaded == 0 and st.batches_created == 0

    # A URL: fetched at run time; its job fails by name and nothing of it is sent or uploaded.
    async def serve_cut(request: web.Request) -> web.StreamResponse:
        return web.Response(body=cut, content_type="image/png")

    hostile.handler = serve_cut
    remote = write_jobs(tmp_path / "remote.yaml", [
        {"prompt": "a plain one"},
        {"prompt": "put it on a table", "images": [f"{hostile.url}/cut.png"]}])
    b = brun(bserver, remote, tmp_path / "rb", "--wait")
    live = cli("run", remote, "--out", tmp_path / "rl", "--base-url", bserver.url,
               "--provider", "google", "--no-progress", env=clean_env(BATCHGEN_API_KEY=SECRET))
    for r, out in ((b, tmp_path / "rb"), (live, tmp_path / "rl")):
        assert r.code == 1, r.output
        failed = [x for x in ledger_lines(out) if x["status"] != "succeeded"]
        (rec,) = failed
        err = rec["error"]
        assert isinstance(err, dict) and err["kind"] == "reference"
        assert f"{remote}:" in str(err["message"]), err
        assert f"reference {hostile.url}/cut.png: not a whole image" in str(err["message"])
    assert bserver.stats.files_uploaded == 1  # the batch's request file, not the reference
    assert bserver.stats.requests == 1  # live mode sent the plain job only





# -- 8 and 15: --budget against the service's duplicates, and the budget it suggests ----------


def lighthouses(tmp: Path, n: int) -> Path:
    return write_jobs(tmp / "m.yaml", [{"prompt": f"a lighthouse {i}"} for i in range(n)])


def spent(out: Path) -> float:
    return sum(float(r["cost_usd"]) for r in ledger_lines(out))  # type: ignore[arg-type]


def test_budget_holds_when_the_service_bills_many_duplicates(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    bserver.config.batch_duplicate_rate = 0.6
    m = lighthouses(tmp_path, 40)
    out = tmp_path / "out"
    r = brun(bserver, m, out, "--budget", "1.00", "--wait")
    assert r.code == 3, r.output
    st = bserver.stats
    assert st.batch_duplicate_lines > 0  # the fault was on, and billed
    # What the service billed, by its own counter, and what the ledger says, both within it.
    assert st.batch_billed_usd <= 1.00, (st.batch_billed_usd, r.output)
    assert st.batch_billed_usd - 1e-6 <= spent(out) <= 1.00
    # Not stopped at once either: most of the budget went on images.
    assert st.batch_billed_usd > 0.5 and st.batch_billed_images > 6
    assert "duplicate margin" in r.output


def test_budget_reached_suggests_a_budget_the_run_goes_on_with(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    bserver.config.batch_duplicate_rate = 0.6
    m = lighthouses(tmp_path, 20)
    out = tmp_path / "out"
    first = brun(bserver, m, out, "--budget", "0.50", "--wait")
    assert first.code == 3, first.output
    last = first.stderr.strip().splitlines()
    (line,) = [x for x in last if x.startswith("budget reached: ")]
    head, _, command = line.partition("raise --budget: ")
    argv = shlex.split(command)
    assert argv[:2] == ["batchgen", "run"], command
    suggested = float(argv[argv.index("--budget") + 1])
    assert suggested > 0.50, line  # never the budget that just stopped it
    done_before = len({r["job_id"] for r in ledger_lines(out) if r["status"] == "succeeded"})
    assert f"{20 - done_before} jobs not submitted" in head, line

    again = subprocess.run([sys.executable, "-m", "batchgen", *argv[1:]], capture_output=True,
                           text=True, env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len({r["job_id"] for r in ledger_lines(out) if r["status"] == "succeeded"}) == 20
    assert bserver.stats.batch_billed_usd - 1e-6 <= spent(out) <= suggested
