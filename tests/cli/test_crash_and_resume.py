"""The durable runner: faults, kill -9, Ctrl-C, torn ledgers, orphans, full disks, then resume.

Every test runs the CLI as a subprocess against the fake server over HTTP and judges by what the
server counted (requests, billed images) and what is on disk."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import (
    SECRET,
    clean_env,
    ledger_lines,
    run_against,
    spawn,
    wait_for,
    write_manifest,
)
from tests.helpers.runs import succeeded


def run_args(server: ThreadedFakeServer, manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--base-url", server.url, "--no-progress",
            "--backoff", "0.01", *extra]


def test_thirty_percent_transient_faults_finish_every_job(server: ThreadedFakeServer,
                                                          tmp_path: Path) -> None:
    server.config.faults = {"429": 0.08, "503": 0.08, "500": 0.04, "504": 0.04, "drop": 0.06}
    server.config.retry_delay_s = 0.05
    prompts = [f"scene {i}" for i in range(60)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    r = run_against(server, m, out, "--concurrency", "8", "--max-attempts", "12")
    assert r.code == 0, r.output
    assert set(succeeded(out)) == set(prompts)
    stats = server.stats
    assert sum(stats.faults[f] for f in ("429", "503", "500", "504", "drop")) >= 10
    assert stats.billed_images == 60
    assert max(stats.billed_prompts.values()) == 1  # no image paid for twice
    retried = [rec for rec in ledger_lines(out) if int(rec["attempts"]) > 1]  # type: ignore[call-overload]
    assert retried, "faults were injected, so some jobs needed more than one attempt"


def test_truncated_body_is_retried(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.script = ["truncate", "200_html", "502_html"]
    m = write_manifest(tmp_path / "m.yaml", ["only one"])
    r = run_against(server, m, tmp_path / "run", "--concurrency", "1")
    assert r.code == 0, r.output
    (rec,) = ledger_lines(tmp_path / "run")
    assert rec["attempts"] == 4
    # The truncated answer was billed by the server; batchgen counts it in the job's cost.
    assert float(rec["cost_usd"]) > 0.2  # type: ignore[arg-type]


def test_kill_9_then_resume(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.latency_s = 0.15
    prompts = [f"kill test {i}" for i in range(40)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    proc = spawn(*run_args(server, m, out, "--concurrency", "4"), env=env)
    assert wait_for(lambda: len(ledger_lines(out)) >= 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = succeeded(out)
    assert 8 <= len(before) < 40
    # Requests the dead client had already written may still be arriving: let them land.
    time.sleep(0.3)
    assert wait_for(lambda: server.stats.in_flight == 0)
    requests_before = server.stats.requests
    r = run_against(server, m, out, "--concurrency", "4")
    assert r.code == 0, r.output
    after = succeeded(out)
    assert set(after) == set(prompts)
    prompts_sent = server.stats.prompts
    for p in before:
        assert prompts_sent[p] == 1, f"{p} was recorded as done, yet sent again"
    assert server.stats.requests - requests_before <= 40 - len(before)
    for rec in after.values():
        Image.open(out / str(rec["outputs"][0])).load()  # type: ignore[index]


def test_ctrl_c_exits_130_saves_in_flight_and_resumes(server: ThreadedFakeServer,
                                                      tmp_path: Path) -> None:
    server.config.latency_s = 0.3
    prompts = [f"interrupt test {i}" for i in range(30)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    proc = spawn(*run_args(server, m, out, "--concurrency", "4"), env=env)
    assert wait_for(lambda: len(ledger_lines(out)) >= 4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "to resume" in stderr
    done = succeeded(out)
    # Requests in flight when Ctrl-C came were paid for: they were saved, not dropped.
    assert server.stats.billed_images == len(done)
    assert json.loads((out / "run.json").read_text())["state"] == "interrupted"
    r = run_against(server, m, out, "--concurrency", "4")
    assert r.code == 0, r.output
    assert set(succeeded(out)) == set(prompts)
    assert max(server.stats.billed_prompts.values()) == 1


def test_second_ctrl_c_stops_at_once(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.latency_s = 3.0
    # More jobs than the queue holds, so the producer is blocked when the signals come.
    m = write_manifest(tmp_path / "m.yaml", [f"slow {i}" for i in range(40)])
    out = tmp_path / "run"
    proc = spawn(*run_args(server, m, out, "--concurrency", "2"),
                 env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert wait_for(lambda: server.stats.requests >= 2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 2.5
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    for line in (out / "ledger.jsonl").read_text().splitlines() if (out / "ledger.jsonl").exists() else []:
        json.loads(line)


def test_torn_ledger_line_is_tolerated(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["one", "two", "three"])
    out = tmp_path / "run"
    assert run_against(server, m, out).code == 0
    ledger = out / "ledger.jsonl"
    with ledger.open("ab") as fh:
        fh.write(b'{"job_id": "one-123", "status": "succ')
    r = run_against(server, m, out)
    assert r.code == 0, r.output
    assert "torn" in r.stderr
    assert server.stats.requests == 3
    m2 = write_manifest(tmp_path / "m.yaml", ["one", "two", "three", "four"])
    r = run_against(server, m2, out)
    assert r.code == 0, r.output
    assert "manifest changed" in r.stderr and "1 new" in r.stderr
    assert server.stats.requests == 4
    lines = ledger.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)
    assert len(lines) == 4


def test_orphan_image_is_adopted_not_paid_again(server: ThreadedFakeServer,
                                                tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["kept one", "kept two"])
    out = tmp_path / "run"
    assert run_against(server, m, out).code == 0
    # The state a crash between the image rename and the ledger append leaves behind.
    ledger = out / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    ledger.write_text(lines[0] + "\n")
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "state": "running"}))
    r = run_against(server, m, out)
    assert r.code == 0, r.output
    assert server.stats.requests == 2
    recs = ledger_lines(out)
    assert len(recs) == 2 and recs[1].get("adopted") is True
    assert "adopted" in r.stderr


def test_full_disk_keeps_the_answers_in_flight_until_space_is_back(
        server: ThreadedFakeServer, tmp_path: Path) -> None:
    """Issue 19, 3: at concurrency 8 the answers on their way when the disk filled were paid
    for, dropped, and bought again on resume (48 billed for 40). Now they wait in memory."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)], capture_output=True
    ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        server.config.image_bytes = 150_000
        server.config.latency_s = 0.2
        prompts = [f"held {i}" for i in range(24)]
        m = write_manifest(tmp_path / "m.yaml", prompts)
        out = mnt / "run"
        proc = spawn("run", m, "--out", out, "--base-url", server.url, "--provider", "anyfast",
                     "--no-progress", "--backoff", "0.01", "--concurrency", "8",
                     env=clean_env(BATCHGEN_API_KEY=SECRET))
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "held in memory" in line:
                break
        assert any("held in memory" in s for s in seen), "".join(seen)
        assert wait_for(lambda: server.stats.in_flight == 0, timeout=30)
        subprocess.run(["mount", "-o", "remount,size=40m", str(mnt)], check=True)
        _, rest = proc.communicate(timeout=60)
        err = "".join(seen) + rest
        assert proc.returncode == 4, err
        assert "died" not in err and "Traceback" not in err, err
        assert not list(out.glob("*.tmp")), list(out.iterdir())
        # Every answer that was paid for is on disk and in the ledger.
        assert len(succeeded(out)) == server.stats.billed_images, err
        for rec in succeeded(out).values():
            Image.open(out / str(rec["outputs"][0])).load()  # type: ignore[index]
        r = run_against(server, m, out, "--concurrency", "8")
        assert r.code == 0, r.output
        assert set(succeeded(out)) == set(prompts)
        assert server.stats.billed_images == len(prompts)
        assert max(server.stats.prompts.values()) == 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
