"""``batchgen review`` as a user meets it: the command run as a subprocess, its page driven in a
real headless Chromium (Debian's, through Playwright) with the keyboard; and the command's
refusals (a non-loopback --host, a folder that is no run folder)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.helpers.cli import clean_env, cli, ledger_lines, spawn

from .conftest import ANIMALS, write_matrix


@contextmanager
def review_server(run_dir: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``batchgen review DIR --no-open`` running; the URL it printed."""
    proc = spawn("review", run_dir, "--no-open", *extra, env=clean_env())
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "batchgen review printed no URL in 30 s"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url, url
        yield url, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def reviews(run_dir: Path) -> list[dict[str, object]]:
    path = run_dir / "reviews.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_for(check: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def count(page: Page, name: str) -> str:
    return page.inner_text(f'[data-count="{name}"] b')


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[Path, Path]:
    manifest = write_matrix(tmp_path / "pets.yaml")
    out = tmp_path / "run"
    r = cli("run", manifest, "--out", out, "--fake", "--yes", "--no-progress", "--no-gallery")
    assert r.code == 0, r.output
    return manifest, out


@pytest.mark.chromium
def test_review_in_a_real_browser(chromium: str, fresh: tuple[Path, Path]) -> None:
    manifest, run_dir = fresh
    order = [json.loads(x)["job_id"] for x in (run_dir / "jobs.jsonl").read_text().splitlines()]
    shas = {str(d["job_id"]): d["sha256"] for d in ledger_lines(run_dir)}
    with review_server(run_dir) as (url, proc), sync_playwright() as pw:
        origin = url.split("/?", 1)[0]
        browser = pw.chromium.launch(executable_path=chromium,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        requested: list[str] = []
        page.on("request", lambda req: requested.append(req.url))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "&poll=250")
        page.wait_for_function("() => document.querySelectorAll('.card img').length === 7")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth)")
        assert count(page, "succeeded") == "7" and count(page, "unreviewed") == "7"
        ids = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.id)")
        assert ids == order  # manifest order

        # Two rejections with the keyboard: the cursor starts on the first and moves on.
        page.keyboard.press("r")
        page.keyboard.press("r")
        wait_for(lambda: len(reviews(run_dir)) == 2)
        got = reviews(run_dir)
        assert [(r["job_id"], r["verdict"], r["sha256"]) for r in got] == [
            (order[0], "rejected", shas[order[0]]), (order[1], "rejected", shas[order[1]])]
        page.wait_for_function(
            "() => document.querySelector('[data-count=rejected] b').textContent === '2'")
        st = json.loads(cli("status", run_dir, "--json").stdout)
        assert st["review"] == {"accepted": 0, "rejected": 2, "unreviewed": 5}

        # Undo puts the second back; a note goes with a rejection; the large view shows it all.
        page.keyboard.press("u")
        wait_for(lambda: len(reviews(run_dir)) == 3)
        assert reviews(run_dir)[-1]["verdict"] == "cleared"
        assert reviews(run_dir)[-1]["job_id"] == order[1]
        page.keyboard.press("a")  # accepts order[1], moves to order[2]
        page.keyboard.press("n")
        page.keyboard.type("three ears")
        page.keyboard.press("Enter")
        wait_for(lambda: len(reviews(run_dir)) == 5)
        assert [(r["job_id"], r["verdict"], r["note"]) for r in reviews(run_dir)[3:]] == [
            (order[1], "accepted", ""), (order[2], "rejected", "three ears")]
        page.keyboard.press("k")
        page.keyboard.press("Enter")
        page.wait_for_selector("#view:not([hidden])")
        page.wait_for_function(
            f"() => document.querySelector('#details [data-field=id]')?.textContent === {json.dumps(order[2])}")
        line = next(d for d in ledger_lines(run_dir) if d["job_id"] == order[2])
        assert page.inner_text("#details [data-field=prompt]") == line["prompt"]
        assert page.inner_text("#details [data-field='model text']") == line["text"]
        assert "three ears" in page.inner_text("#details [data-field=verdict]")
        assert "animal = " in page.inner_text("#details [data-field=vars]")
        assert "shelf = A" in page.inner_text("#details [data-field=meta]")
        page.keyboard.press("Escape")

        # A filter is asked of the server; the grid groups by two vars.
        page.select_option("#f-verdict", "rejected")
        page.wait_for_function("() => document.querySelectorAll('.card').length === 2")
        # Reviewing what is unreviewed: a rejected image leaves the list and the next one
        # takes its place under the cursor, so two keys are two images, none skipped.
        page.select_option("#f-verdict", "unreviewed")
        page.wait_for_function("() => document.querySelectorAll('.card').length === 4")
        page.keyboard.press("r")
        page.keyboard.press("r")
        wait_for(lambda: len(reviews(run_dir)) == 7)
        assert [r["job_id"] for r in reviews(run_dir)[5:]] == order[3:5]
        page.wait_for_function("() => document.querySelectorAll('.card').length === 2")
        assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.id)") == order[5:]
        page.wait_for_timeout(600)  # a poll or two: the cursor stays on the next unreviewed
        assert page.get_attribute(".card.cur", "data-id") == order[5]
        page.select_option("#f-verdict", "")
        page.select_option("#view-mode", "grid")
        page.select_option("#grid-rows", "var.animal")
        page.select_option("#grid-cols", "var.style")
        page.wait_for_function("() => document.querySelectorAll('#grid th.rowh').length === 4")
        # The blocked row has no vars: its own row and column, "(none)".
        assert page.eval_on_selector_all("#grid th.rowh", "hs => hs.map(h => h.textContent)") \
            == [*ANIMALS, "(none)"]
        assert len(page.query_selector_all("#grid .thumb img")) == 7
        page.select_option("#view-mode", "list")

        # A run writing into the folder: the new images and the spend appear without a reload.
        spent = count(page, "spend")
        write_matrix(manifest, [*ANIMALS, "fox"])
        r = cli("run", manifest, "--out", run_dir, "--fake", "--yes", "--no-progress",
                "--no-gallery")
        assert r.code == 0, r.output
        page.wait_for_function("() => document.querySelectorAll('.card img').length === 9")
        assert count(page, "succeeded") == "9" and count(page, "spend") != spent

        # Without the token: refused, from outside the page and from inside it.
        assert page.request.get(origin + "/api/state").status == 403
        assert page.request.get(origin + "/").status == 403
        inside = page.evaluate("""async () => [
            (await fetch('api/state')).status,
            (await fetch('api/review?token=' + new URLSearchParams(location.search).get('token'),
              {method: 'POST', headers: {'Content-Type': 'application/json'},
               body: JSON.stringify({job_id: 'x', verdict: 'rejected'})})).status]""")
        assert inside == [403, 403]
        assert len(reviews(run_dir)) == 7
        assert errors == []
        # Nothing fetched from anywhere but this server.
        assert requested and all(u.startswith(origin + "/") for u in requested), requested
        browser.close()
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    token = url.split("token=", 1)[1]
    assert token not in err  # no access log holding it


def test_a_remote_host_must_be_asked_for(run_dir: Path) -> None:
    r = cli("review", run_dir, "--no-open", "--host", "0.0.0.0")
    assert r.code == 2 and "--allow-remote" in r.stderr and not r.stdout
    proc = spawn("review", run_dir, "--no-open", "--host", "0.0.0.0", "--allow-remote",
                 env=clean_env())
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready
        assert proc.stdout.readline().startswith("http://0.0.0.0:")
    finally:
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert "warning" in err and "0.0.0.0" in err
    bad = cli("review", run_dir / "images", "--no-open")
    assert bad.code == 2 and "not a batchgen run folder" in bad.stderr


def test_a_port_in_use_is_a_one_line_error(run_dir: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = cli("review", run_dir, "--no-open", "--port", str(port))
    assert r.code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not r.stdout
