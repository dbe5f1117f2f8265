"""Issue 24, "messages that say what happened": each message checked through the CLI, against
the fake server over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgen.fake import FakeConfig, ThreadedFakeServer
from tests.helpers.cli import (
    SECRET,
    clean_env,
    cli,
    ledger_lines,
    run_against,
    spawn,
    wait_for,
    write_manifest,
)
from tests.helpers.images import make_image
from tests.helpers.runs import ENV, run_args
from tests.helpers.tty import cli_on_tty

# -- 1. a run that stopped early says "stopped:", and why ---------------------------------------


def test_a_ctrl_c_summary_says_stopped_and_why(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.5)) as srv:
        m = write_manifest(tmp_path / "m.yaml", [f"c {i}" for i in range(12)])
        out = tmp_path / "run"
        proc = spawn(*run_args(srv, m, out, "--concurrency", "2"), env=ENV)
        assert wait_for(lambda: len(ledger_lines(out)) >= 1, timeout=30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    summary = [x for x in err.splitlines() if x.startswith(("done:", "stopped:"))]
    assert len(summary) == 1, err
    assert summary[0].startswith("stopped: interrupted (Ctrl-C); "), err
    assert " succeeded, 0 failed; spent this run $" in summary[0]
    assert "to resume: batchgen run" in err


def test_a_budget_stop_summary_says_stopped_and_why(server: ThreadedFakeServer,
                                                    tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"b {i}" for i in range(8)])
    r = run_against(server, m, tmp_path / "run", "--budget", "0.50", "--concurrency", "1")
    assert r.code == 3, r.output
    assert "done:" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("stopped:")]
    assert re.match(r"stopped: the \$0\.50 budget is reached; [1-3] succeeded, 0 failed", line), line


def test_a_completed_run_still_says_done(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["all of it"])
    r = run_against(server, m, tmp_path / "run")
    assert r.code == 0 and "\ndone: 1 succeeded, 0 failed" in "\n" + r.stderr
    assert "stopped" not in r.stderr


# -- 2. the progress bar shows one rate ---------------------------------------------------------


def test_the_progress_bar_shows_one_rate(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.2)) as srv:
        m = write_manifest(tmp_path / "m.yaml", [f"bar {i}" for i in range(6)])
        r = cli_on_tty("run", m, "--out", tmp_path / "run", "--base-url", srv.url,
                       "--concurrency", "1", "--no-gallery", env=ENV)
    assert r.code == 0, r.stderr
    assert "img/min" in r.stderr, r.stderr  # the bar was drawn
    assert "img/s" not in r.stderr and "s/img" not in r.stderr, r.stderr


# -- 3. estimate --mode batch: one table, and a time line that fits a batch ---------------------


def test_estimate_in_batch_mode_prints_one_table(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"e {i}" for i in range(4)])
    text = cli("estimate", m, "--out", tmp_path / "x", "--mode", "batch").stdout
    heads = [x for x in text.splitlines() if x.lstrip().startswith("cost ")]
    totals = [x for x in text.splitlines() if x.lstrip().startswith("total")]
    assert len(heads) == 1 and len(totals) == 1, text
    assert heads[0].split()[-3:] == ["standard", "flex", "batch"]
    (time_line,) = [x for x in text.splitlines() if x.lstrip().startswith("time:")]
    assert "24 h" in time_line and "concurrency 8" not in time_line, text
    # The live estimate keeps its table and its pace.
    live = cli("estimate", m, "--out", tmp_path / "x").stdout
    assert "concurrency 8" in live and "subtotal" in live


# -- 4. --fake does not ask to spend money it will not spend ------------------------------------


def test_a_fake_run_says_it_charges_nothing_and_does_not_ask(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"f {i}" for i in range(3)])
    # Above --confirm-above, at a terminal: a real run would ask (and "n" would stop it).
    r = cli_on_tty("run", m, "--out", tmp_path / "run", "--fake", "--confirm-above", "0.1",
                   "--no-progress", "--no-gallery", env=clean_env(), typed="n\n")
    assert r.code == 0, r.stderr + r.stdout
    assert "Go ahead?" not in r.stdout + r.stderr
    assert "the built-in fake (--fake) charges nothing" in r.stderr
    assert len(ledger_lines(tmp_path / "run")) == 3


def test_a_real_run_at_a_terminal_still_asks(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["ask me"])
    r = cli_on_tty("run", m, "--out", tmp_path / "run", "--base-url", server.url,
                   "--confirm-above", "0.01", "--no-progress", env=ENV, typed="n\n")
    assert r.code == 0 and "Go ahead?" in r.stdout + r.stderr
    assert "not started" in r.stderr and server.stats.requests == 0


# -- 5. report's throughput leaves out the idle time between runs -------------------------------


def _shift_ledger(out: Path, seconds: float) -> None:
    """Move every ledger line's times back: the run happened ``seconds`` earlier (yesterday)."""
    lines = []
    for rec in ledger_lines(out):
        for key in ("started_at", "finished_at"):
            t = dt.datetime.fromisoformat(str(rec[key]).replace("Z", "+00:00"))
            rec[key] = (t - dt.timedelta(seconds=seconds)).isoformat()
        lines.append(json.dumps(rec))
    (out / "ledger.jsonl").write_text("\n".join(lines) + "\n")


def test_report_throughput_leaves_out_the_gap_between_runs(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.3)) as srv:
        out = tmp_path / "run"
        first = write_manifest(tmp_path / "m.yaml", [f"t {i}" for i in range(4)])
        assert run_against(srv, first, out, "--concurrency", "1").code == 0
        _shift_ledger(out, 2 * 3600)
        write_manifest(first, [f"t {i}" for i in range(8)])
        assert run_against(srv, first, out, "--concurrency", "1").code == 0
    rep = json.loads(cli("report", out, "--json").stdout)
    thr = rep["throughput"]
    assert thr["runs"] == 2 and abs(thr["idle_s"] - 7200) < 60, thr
    # 8 images in a few seconds of work, not 8 over two hours (0.07 a minute).
    assert thr["span_s"] < 60 and thr["images_per_min"] > 8, thr
    assert sum(b["images"] for b in thr["buckets"]) == 8
    text = cli("report", out).stdout
    assert "(2 runs; 2h00m idle between them left out)" in text or \
        "(2 runs; 1h59m idle between them left out)" in text, text


# -- 6. the common YAML slips in batchgen's words -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jobs:\n  - prompt: a mug\n    image_size: 1K\n    aspect_ratio: '1:1'\n"
         "  - prompt: a cup\n    image_size: 1K\n     seed: 7\n",
         "m.yaml:7: seed: line 7 is indented 5 spaces, the job's other fields 4"),
        ("jobs:\n  - prompt: a mug\n    image_size: 1K\n   aspect_ratio: '1:1'\n",
         "m.yaml:4: aspect_ratio: line 4 is indented 3 spaces, the job's other fields 4"),
        ("defaults:\n  image_size: 1K\n   seed: 3\njobs:\n  - prompt: a\n",
         "m.yaml:3: seed: line 3 is indented 3 spaces, the line above it 2"),
        ("jobs:\n  - prompt: a mug\n\timage_size: 1K\n",
         "m.yaml:3: line 3 is indented with a tab: YAML does not allow tabs; indent with spaces"),
        ("jobs:\n  - prompt: a mug\n    image_size:\t1K\n",
         "m.yaml:3: a tab at column 16: YAML does not allow tabs there; use spaces"),
    ],
)
def test_yaml_slips_are_said_as_a_person_fixes_them(tmp_path: Path, text: str,
                                                    expected: str) -> None:
    m = tmp_path / "m.yaml"
    m.write_text(text)
    for command in ("validate", "estimate"):
        r = cli(command, m, "--out", tmp_path / "run") if command == "estimate" else \
            cli(command, m)
        assert r.code == 2, r.output
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"batchgen: {tmp_path / expected}"), line
        assert "expected <block end>" not in line and "cannot start any token" not in line
    assert not (tmp_path / "run").exists()


def test_a_colon_in_a_value_keeps_the_yaml_message(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n  - prompt: a sign: open\n")
    r = cli("validate", m)
    assert r.code == 2 and f"{m}:2: YAML syntax error: mapping values" in r.stderr, r.stderr


# -- 7. a missing reference file names its near match -------------------------------------------


@pytest.mark.parametrize(
    ("written", "meant"),
    [("refs/mgu.png", "refs/mug.png"), ("refs/Mug.PNG", "refs/mug.png"),
     ("ref/mug.png", "refs/mug.png")],
)
def test_a_missing_reference_suggests_its_near_match(tmp_path: Path, written: str,
                                                     meant: str) -> None:
    (tmp_path / "refs").mkdir()
    make_image(tmp_path / "refs" / "mug.png")
    make_image(tmp_path / "refs" / "bowl.png")
    m = tmp_path / "m.yaml"
    m.write_text(f"jobs:\n  - prompt: like this\n    images: [{written}]\n")
    r = cli("validate", m)
    assert r.code == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"batchgen: {m}:3: images: "), line
    assert f"file not found: {written} " in line and line.endswith(f"; did you mean {meant}?")


def test_a_missing_reference_with_nothing_near_says_only_not_found(tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    make_image(tmp_path / "refs" / "mug.png")
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n  - prompt: like this\n    images: [refs/elephant.png]\n")
    r = cli("validate", m)
    assert r.code == 2 and "file not found: refs/elephant.png" in r.stderr
    assert "did you mean" not in r.stderr


# -- 8. status given a manifest shows the manifest's run folder ---------------------------------


def test_status_of_a_manifest_shows_its_run_folder(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a", "b"])
    env = clean_env()
    r = cli("run", "m.yaml", "--fake", "--no-progress", "--no-gallery", env=env, cwd=tmp_path)
    assert r.code == 0, r.output
    r = cli("status", "m.yaml", "--json", env=env, cwd=tmp_path)
    assert r.code == 0, r.output
    assert json.loads(r.stdout)["succeeded"] == 2
    assert "m.yaml is a manifest; showing its run folder jobs/m" in r.stderr
    for command in ("report", "gallery"):
        r = cli(command, "m.yaml", env=env, cwd=tmp_path)
        assert r.code == 0 and "showing its run folder jobs/m" in r.stderr, r.output
    # A command that changes the folder still wants the folder itself.
    r = cli("prune", "m.yaml", "--yes", env=env, cwd=tmp_path)
    assert r.code == 2 and "its run folder is jobs/m" in r.stderr
    # Another manifest of the same name is not shown this folder.
    (tmp_path / "other").mkdir()
    write_manifest(tmp_path / "other" / "m.yaml", ["c"])
    r = cli("status", "other/m.yaml", env=env, cwd=tmp_path)
    assert r.code == 2 and "jobs/m belongs to another manifest" in r.stderr, r.output
    assert m.exists()


def test_status_of_a_manifest_that_never_ran_says_so(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.yaml", ["a"])
    r = cli("status", "m.yaml", cwd=tmp_path)
    assert r.code == 2 and "its run folder is jobs/m" in r.stderr
    assert "jobs/m holds no run yet" in r.stderr


# -- 9. a short key is not cut out of a longer name in a suggested command ----------------------

SHORT_KEY = "k9x2"


def _key_stands_alone(text: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_-]){SHORT_KEY}(?![A-Za-z0-9_-])", text) is not None


def test_a_short_key_leaves_a_longer_name_alone_and_never_shows(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SHORT_KEY)) as srv:
        env = clean_env(BATCHGEN_API_KEY=SHORT_KEY)
        m = write_manifest(tmp_path / f"{SHORT_KEY}board.yaml", ["a", "b", "c"])
        out = tmp_path / "jobs" / f"{SHORT_KEY}board"
        r = cli("run", m, "--out", out, "--base-url", srv.url, "--no-progress", "--limit", "1",
                env=env)
        assert r.code == 0, r.output
        (line,) = [x for x in r.stderr.splitlines() if "to run them:" in x]
        assert f" {m} --out {out} " in line, line  # the names as typed: the command works
        assert "REDACTED" not in line
        # Where the key is a whole part of an argument, it is still cut out.
        out2 = tmp_path / SHORT_KEY
        r2 = cli("run", m, "--out", out2, "--base-url", srv.url, "--no-progress", "--limit", "1",
                 env=env)
        assert r2.code == 0, r2.output
        (line2,) = [x for x in r2.stderr.splitlines() if "to run them:" in x]
        assert f"--out {tmp_path / 'REDACTED'} " in line2, line2
        # A URL that carries it (refused, and the message does not show it).
        r3 = cli("run", m, "--out", out, "--base-url", f"{srv.url}/?key={SHORT_KEY}",
                 "--no-progress", "--limit", "1", env=env)
    assert r3.code == 2 and "key=REDACTED" in r3.stderr, r3.output
    for text in (r.output, line2, r3.output):
        assert not _key_stands_alone(text), text


def test_a_long_key_is_cut_out_even_inside_a_longer_name(server: ThreadedFakeServer,
                                                         tmp_path: Path) -> None:
    m = write_manifest(tmp_path / f"x{SECRET}y.yaml", ["a", "b"])
    r = run_against(server, m, tmp_path / "run", "--limit", "1")
    assert r.code == 0, r.output
    assert SECRET not in r.output and "xREDACTEDy.yaml" in r.output


# -- 10. the fake answers a wrong key at once, as the service does -------------------------------


def test_a_wrong_key_costs_one_request_on_a_slow_fake(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=1.5)) as srv:
        m = write_manifest(tmp_path / "m.yaml", [f"k {i}" for i in range(12)])
        started = time.monotonic()
        r = cli("run", m, "--out", tmp_path / "run", "--base-url", srv.url, "--no-progress",
                "--concurrency", "8", env=clean_env(BATCHGEN_API_KEY="wrong-key"))
        elapsed = time.monotonic() - started
        assert r.code == 4, r.output
        assert srv.stats.requests == 1, r.output  # the first goes alone; its answer stops the run
    assert "stopped:" in r.stderr and elapsed < 15
    # A good key still waits the latency: only who-is-calling is answered at once.
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.5)) as srv:
        one = write_manifest(tmp_path / "one.yaml", ["slow"])
        started = time.monotonic()
        assert run_against(srv, one, tmp_path / "ok").code == 0
        assert time.monotonic() - started >= 0.5


# -- 11. -q/--quiet, and gallery --open ----------------------------------------------------------


def test_quiet_shows_only_the_summary_line_at_a_terminal(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.1)) as srv:
        m = write_manifest(tmp_path / "m.yaml", [f"q {i}" for i in range(4)])
        r = cli_on_tty("run", m, "--out", tmp_path / "run", "--base-url", srv.url, "-q",
                       "--concurrency", "1", env=ENV)
    assert r.code == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("done: 4 succeeded, 0 failed"), r.stderr
    assert (tmp_path / "run" / "gallery.html").exists()  # refreshed, only not announced


def test_quiet_keeps_the_stop_and_how_to_go_on(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.15)) as srv:
        m = write_manifest(tmp_path / "m.yaml", [f"b {i}" for i in range(8)])
        r = run_against(srv, m, tmp_path / "run", "--quiet", "--budget", "0.40",
                        "--concurrency", "1", "--log-every", "0.1")
    assert r.code == 3, r.output
    assert " progress: " not in r.stderr and "stopping (" not in r.stderr, r.stderr
    # Warnings are kept: "the budget covers about 2 of 8 images" is what -q must not hide.
    assert r.stderr.startswith("warning: the budget covers about ")
    lines = [x for x in r.stderr.splitlines() if not x.startswith("warning: ")]
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("stopped: the $0.40 budget is reached; ")
    assert lines[1].startswith("budget reached: ") and "--budget" in lines[1]
    # Errors are still said, one line, exit 2.
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - prompt: x\n    aspect_ratio: '7:3'\n")
    r = run_against(srv, bad, tmp_path / "run2", "-q")
    assert r.code == 2 and r.stderr.startswith(f"batchgen: {bad}:3: aspect_ratio: "), r.stderr


def test_quiet_in_batch_mode_says_only_the_outcome(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"qb {i}" for i in range(3)])
    r = cli("run", m, "--out", tmp_path / "run", "--fake", "--provider", "google", "--mode",
            "batch", "--wait", "--poll-interval", "0.2", "-q")
    assert r.code == 0, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("done: 3 of 3 succeeded"), r.stderr


def test_gallery_open_hands_the_page_to_the_browser(server: ThreadedFakeServer,
                                                    tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["look"])
    out = tmp_path / "run"
    assert run_against(server, m, out, "--no-gallery").code == 0
    seen = tmp_path / "browser-was-given"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {seen}\n')
    browser.chmod(0o755)
    r = cli("gallery", out, "--open", env=clean_env(BROWSER=str(browser)))
    assert r.code == 0, r.output
    page = out / "gallery.html"
    assert page.exists() and seen.read_text() == page.resolve().as_uri()
    # Without --open no browser is started.
    seen.unlink()
    assert cli("gallery", out, env=clean_env(BROWSER=str(browser))).code == 0
    assert not seen.exists()


# -- 12. validate --check-urls ------------------------------------------------------------------


@contextlib.contextmanager
def _image_host(png: bytes) -> Iterator[tuple[str, list[str]]]:
    """A local aiohttp server: /good.png is there, /nohead.png refuses HEAD (405) but serves
    GET, anything else is a 404. Yields its URL and the requests it saw ("HEAD /good.png")."""
    from aiohttp import web

    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        if request.path == "/nohead.png" and request.method == "HEAD":
            return web.Response(status=405)
        if request.path in ("/good.png", "/nohead.png"):
            return web.Response(body=png, content_type="image/png")
        return web.Response(status=404, text="no such file")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_validate_check_urls_names_each_missing_url(tmp_path: Path) -> None:
    png = make_image(tmp_path / "ref.png").read_bytes()
    with _image_host(png) as (url, seen):
        m = tmp_path / "m.yaml"
        m.write_text(
            "jobs:\n"
            f"  - prompt: one\n    images: [{url}/good.png]\n"
            f"  - prompt: two\n    images: [{url}/gone.png]\n"
            f"  - prompt: three\n    images: [{url}/good.png, {url}/nohead.png]\n"
            "  - prompt: four\n    images: ['http://127.0.0.1:9/x.png']\n"
        )
        plain = cli("validate", m)
        assert plain.code == 0 and seen == [], plain.output  # nothing asked without the flag
        r = cli("validate", m, "--check-urls")
        assert r.code == 2, r.output
        problems = r.stderr.strip().splitlines()
        assert problems[0] == f"batchgen: {m}:4: images: {url}/gone.png: HTTP 404", r.stderr
        assert problems[1].startswith(f"batchgen: {m}:8: images: http://127.0.0.1:9/x.png: "
                                      "unreachable ("), r.stderr
        assert len(problems) == 2 and "ok:" not in r.stdout
        # Each URL asked once; the one that refuses HEAD was asked with a GET and is fine.
        assert sorted(seen) == ["GET /nohead.png", "HEAD /gone.png", "HEAD /good.png",
                                "HEAD /nohead.png"]
        fine = tmp_path / "fine.yaml"
        fine.write_text(f"jobs:\n  - prompt: one\n    images: [{url}/good.png]\n")
        r = cli("validate", fine, "--check-urls")
        assert r.code == 0 and "1 URL reference checked: each answered" in r.stderr, r.output
