"""The budget cap through the CLI: a hard cap, and the most a request could cost reserved."""

from __future__ import annotations

from pathlib import Path

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import ledger_lines, run_against, write_manifest


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
