"""Money and choice: the budget cap, confirmation, the progress bar, --limit / --only / --shard."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from batchgen.fake import ThreadedFakeServer

from .conftest import SECRET, clean_env, ledger_lines, run_against, write_manifest


def total_cost(out: Path) -> float:
    return sum(float(r["cost_usd"]) for r in ledger_lines(out))  # type: ignore[arg-type]


def test_budget_is_a_hard_cap_and_a_larger_one_continues(server: ThreadedFakeServer,
                                                         tmp_path: Path) -> None:
    prompts = [f"budget {i}" for i in range(20)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    r = run_against(server, m, out, "--budget", "1.00", "--concurrency", "4")
    assert r.code == 3, r.output
    assert "budget reached" in r.stderr and "--budget" in r.stderr
    billed = server.stats.billed_usd
    assert 0.5 < billed <= 1.00
    assert total_cost(out) <= 1.00
    done_first = len(ledger_lines(out))
    assert 4 <= done_first < 20
    # The same cap again: the cap counts what earlier runs spent, so it still holds.
    r = run_against(server, m, out, "--budget", "1.00")
    assert r.code == 3
    assert server.stats.billed_usd <= 1.00 and total_cost(out) <= 1.00
    billed = server.stats.billed_usd
    r = run_against(server, m, out, "--budget", "1.00")
    assert r.code == 3 and server.stats.billed_usd == billed
    r = run_against(server, m, out, "--budget", "10", "--concurrency", "4")
    assert r.code == 0, r.output
    assert {x["prompt"] for x in ledger_lines(out)} == set(prompts)
    assert max(server.stats.billed_prompts.values()) == 1
    assert total_cost(out) <= 10


def test_budget_reserves_the_most_a_request_could_cost(server: ThreadedFakeServer,
                                                      tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"x {i}" for i in range(4)], image_size="4K")
    out = tmp_path / "run"
    # A 4K image bills ~$0.244 and reserves ~$0.264: after one, a second could pass $0.50.
    r = run_against(server, m, out, "--budget", "0.5", "--concurrency", "1")
    assert r.code == 3, r.output
    assert len(ledger_lines(out)) == 1
    assert server.stats.billed_usd == 0.24
    assert 0.24 <= total_cost(out) <= 0.5


def test_limit_and_only(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n" + "".join(f"  - id: cat-{i}\n    prompt: cat {i}\n" for i in range(4))
                 + "".join(f"  - id: dog-{i}\n    prompt: dog {i}\n" for i in range(4)))
    out = tmp_path / "run"
    r = run_against(server, m, out, "--limit", "3")
    assert r.code == 0, r.output
    assert [x["prompt"] for x in ledger_lines(out)] == ["cat 0", "cat 1", "cat 2"] or \
        sorted(x["prompt"] for x in ledger_lines(out)) == ["cat 0", "cat 1", "cat 2"]
    r = run_against(server, m, out, "--only", "dog-*")
    assert r.code == 0, r.output
    assert sorted(str(x["prompt"]) for x in ledger_lines(out))[3:] == [f"dog {i}" for i in range(4)]
    assert server.stats.requests == 7


def test_shards_cover_every_job_once(server: ThreadedFakeServer, tmp_path: Path) -> None:
    prompts = [f"shard {i}" for i in range(30)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    seen: list[str] = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}"
        r = run_against(server, m, out, "--shard", f"{k}/3")
        assert r.code == 0, r.output
        got = [str(x["prompt"]) for x in ledger_lines(out)]
        assert 0 < len(got) < 30
        seen += got
    assert sorted(seen) == sorted(prompts)
    assert server.stats.requests == 30


def _pty_run(args: list[str], env: dict[str, str], answer: bytes | None,
             timeout: float = 30) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "batchgen", *args], stdin=slave,
                            stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    answered = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
            if answer is not None and not answered and b"Go ahead?" in b"".join(chunks):
                os.write(master, answer)
                answered = True
        elif proc.poll() is not None:
            break
    proc.wait(5)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_confirmation_and_progress_bar_on_a_terminal(server: ThreadedFakeServer,
                                                     tmp_path: Path) -> None:
    server.config.latency_s = 0.05
    m = write_manifest(tmp_path / "m.yaml", [f"tty {i}" for i in range(12)])
    out = tmp_path / "run"
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    args = ["run", str(m), "--out", str(out), "--base-url", server.url, "--confirm-above", "0.5"]
    code, text = _pty_run(args, env, b"n\n")
    assert "estimated at $1.6" in text
    # Declining is a choice, not a failure: exit 0, nothing sent.
    assert code == 0 and "not started: nothing was sent" in text
    assert server.stats.requests == 0
    code, text = _pty_run(args, env, b"y\n")
    assert code == 0, text
    assert "img/min" in text and "ok=12" in text and "$1.6" in text
    assert SECRET not in text
    # --yes skips the question.
    code, text = _pty_run([*args, "--yes", "--retry-failed"], env, None)
    assert "Go ahead?" not in text
