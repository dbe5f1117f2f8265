"""Batch status that tells the truth (issue 23), through the CLI against the fake: when each
state was seen, --refresh, the headline after cancel, late batches flagged, --wait's log lines
and exit 5 (or 0 with --running-ok)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from batchgen.fake import FakeConfig, ThreadedFakeServer
from tests.helpers.cli import SECRET, clean_env, cli


@pytest.fixture
def bserver() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=60.0)) as srv:
        yield srv


def submit(srv: ThreadedFakeServer, tmp: Path, *extra: str, n: int = 6):  # type: ignore[no-untyped-def]
    m = tmp / "m.yaml"
    m.write_text(yaml.safe_dump({"provider": "google",
                                 "jobs": [{"prompt": f"st {i}"} for i in range(n)]}))
    return cli("run", m, "--out", tmp / "out", "--base-url", srv.url, "--mode", "batch",
               "--no-progress", "--poll-interval", "0.05", *extra,
               env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=60)


def status(out: Path, *extra: str, srv: ThreadedFakeServer | None = None) -> str:
    args: list[str | Path] = ["status", out, *extra]
    if srv is not None:
        args += ["--base-url", srv.url]
    r = cli(*args, env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert r.code == 0, r.output
    return r.stdout


def test_status_says_when_the_state_was_seen_and_after_cancel_the_headline_follows(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    r = submit(bserver, tmp_path, "--batch-size", "3")
    assert r.code == 5, r.output
    out = tmp_path / "out"
    text = status(out)
    assert "batches: 2 pending" in text.splitlines()[0], text
    assert text.count("pending, as of the poll") == 2, text
    # Cancelled: no key needed to read what it left; the headline no longer says running.
    c = cli("cancel", out, "--yes", "--base-url", bserver.url,
            env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert c.code == 0, c.output
    text = status(out)
    head = text.splitlines()[0]
    assert "running" not in head and "pending" not in head and "cancelled" in head, text
    assert text.count("cancelled") >= 3 and "as of the poll" not in text, text
    assert json.loads(cli("status", out, "--json").stdout)["pending"] == 6


def test_status_refresh_polls_the_service(bserver: ThreadedFakeServer, tmp_path: Path) -> None:
    bserver.config.batch_seconds = 0.2
    assert submit(bserver, tmp_path).code == 5
    out = tmp_path / "out"
    time.sleep(0.3)  # the fake's batch is done meanwhile
    assert "pending, as of the poll" in status(out)  # what it knows, without asking
    text = status(out, "--refresh", srv=bserver)
    assert "succeeded, as of the poll" in text, text
    assert "poll 0s ago" in text or "poll 1s ago" in text, text
    assert cli("status", out, "--refresh", env=clean_env()).code == 2  # the key is needed


def test_a_batch_pending_past_26_hours_is_flagged_with_what_to_do(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    assert submit(bserver, tmp_path).code == 5
    out = tmp_path / "out"
    journal = out / "batches.jsonl"
    last = json.loads(journal.read_text().splitlines()[-1])
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=27)).isoformat()
    with journal.open("a") as fh:
        fh.write(json.dumps({"ev": "batch", "display_name": last["display_name"],
                             "created_at": old}) + "\n")
    text = status(out)
    assert "over 26 h" in text and f"batchgen cancel {out}" in text, text
    assert "27.0h old" in text


def test_wait_writes_a_line_every_poll_when_stderr_is_not_a_terminal(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    bserver.config.batch_seconds = 0.3
    r = submit(bserver, tmp_path, "--wait", "--log-every", "0.01")
    assert r.code == 0, r.output
    lines = [x for x in r.stderr.splitlines() if " batches: " in x]
    assert len(lines) >= 2, r.stderr
    assert "pending" in lines[0] and "next poll in" in lines[0] and "jobs collected 0/6" in lines[0]
    assert "jobs collected 6/6 (6 succeeded, 0 failed)" in lines[-1] and "spent $" in lines[-1]


def test_running_ok_makes_still_running_exit_0(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    r = submit(bserver, tmp_path, "--running-ok")
    assert r.code == 0, r.output
    assert "still running on the service" in r.stderr
