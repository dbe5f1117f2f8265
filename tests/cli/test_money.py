"""Paying twice, losing paid images, and the budget cap, in the corners a review found.

Each test runs the CLI as a subprocess against the fake server over HTTP and judges by what the
server billed and what is on disk.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import batchgen.fake.app as fake_app
from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import SECRET, clean_env, ledger_lines, run_against, wait_for, write_manifest


def folder_spend(out: Path) -> float:
    return sum(float(r["cost_usd"]) for r in ledger_lines(out))  # type: ignore[arg-type]


def settle(server: ThreadedFakeServer) -> None:
    """Let handlers whose client hung up finish (the fake bills "slow" answers regardless)."""
    assert wait_for(lambda: server.stats.in_flight == 0, timeout=5)


def test_image_saved_before_a_failed_ledger_write_is_not_paid_again(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    # The ledger write fails (EFBIG here, ENOSPC or EIO in life) after the image and its sidecar
    # were saved. The run stops cleanly and writes state "storage" to run.json, so the next run
    # never looks for orphans and pays for that image again.
    m = write_manifest(tmp_path / "m.yaml", [f"fs {i}" for i in range(8)])
    out = tmp_path / "run"
    args = ["run", str(m), "--out", str(out), "--base-url", server.url, "--no-progress",
            "--concurrency", "1"]

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))  # ~4 ledger lines

    env = clean_env(BATCHGEN_API_KEY=SECRET)
    first = subprocess.run([sys.executable, "-m", "batchgen", *args], env=env,
                           capture_output=True, text=True, preexec_fn=small_files, timeout=30)
    assert first.returncode == 4, first.stderr
    assert json.loads((out / "run.json").read_text())["state"] == "storage"
    second = subprocess.run([sys.executable, "-m", "batchgen", *args], env=env,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 0, second.stderr
    assert max(server.stats.billed_prompts.values()) == 1, server.stats.billed_prompts


def test_two_runs_on_one_folder_never_pay_twice(server: ThreadedFakeServer,
                                                tmp_path: Path) -> None:
    server.config.latency_s = 0.1
    m = write_manifest(tmp_path / "m.yaml", [f"two {i}" for i in range(16)])
    out = tmp_path / "run"
    args = [sys.executable, "-m", "batchgen", "run", str(m), "--out", str(out), "--base-url",
            server.url, "--no-progress", "--concurrency", "4"]
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    a = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    a.communicate(timeout=30)
    b.communicate(timeout=30)
    # The second run should refuse ("another batchgen run is using ..."), not pay again.
    assert max(server.stats.billed_prompts.values()) == 1, server.stats.billed_prompts


def test_budget_counts_requests_that_timed_out(server: ThreadedFakeServer,
                                               tmp_path: Path) -> None:
    server.config.script = ["slow"] * 4
    server.config.slow_s = 0.6
    m = write_manifest(tmp_path / "m.yaml", ["slow one"])
    out = tmp_path / "run"
    run_against(server, m, out, "--timeout", "0.3", "--budget", "0.30")
    settle(server)
    assert server.stats.billed_usd <= 0.30, (server.stats.billed_usd, folder_spend(out))


def test_budget_counts_billed_attempts_of_a_job_stopped_by_the_budget(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    # Attempt 1 is billed but cut off (charged ~$0.14); the retry does not fit the $0.20 budget,
    # so the job is abandoned with no ledger line. The next run believes nothing was spent.
    server.config.script = ["truncate"] * 3
    m = write_manifest(tmp_path / "m.yaml", ["cut off"])
    out = tmp_path / "run"
    for _ in range(3):
        r = run_against(server, m, out, "--budget", "0.20")
        assert r.code == 3, r.output
    assert server.stats.billed_usd <= 0.20, (server.stats.billed_usd, folder_spend(out))


def test_budget_counts_url_outputs_that_could_not_be_downloaded(
    server: ThreadedFakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_app, "MAX_STORED_FILES", 0)  # every output URL has expired
    server.config.url_output = "file_data"
    m = write_manifest(tmp_path / "m.yaml", ["url out"])
    out = tmp_path / "run"
    run_against(server, m, out, "--max-attempts", "2", "--budget", "0.17")
    assert server.stats.billed_usd <= 0.17, (server.stats.billed_usd, folder_spend(out))


def test_adopted_orphans_count_toward_the_budget(server: ThreadedFakeServer,
                                                 tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["one", "two"])
    out = tmp_path / "run"
    assert run_against(server, m, out).code == 0
    # What kill -9 between the image rename and the ledger append leaves behind.
    ledger = out / "ledger.jsonl"
    ledger.write_text(ledger.read_text().splitlines()[0] + "\n")
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "state": "running"}))
    m = write_manifest(tmp_path / "m.yaml", ["one", "two", "three"])
    run_against(server, m, out, "--budget", "0.30")
    assert folder_spend(out) <= 0.30, folder_spend(out)


def test_raising_count_does_not_pay_again_for_the_image_already_made(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    m = write_manifest(tmp_path / "m.yaml", ["a red fox"])
    assert run_against(server, m, out).code == 0
    m = write_manifest(tmp_path / "m.yaml", ["a red fox"], count=2)
    assert run_against(server, m, out).code == 0
    assert server.stats.billed_images == 2, [r["job_id"] for r in ledger_lines(out)]
