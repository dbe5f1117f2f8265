"""Chains through the CLI in batch mode (issue 22): waves, parents' images as uploaded files,
conversations in the request lines; the fake proves what each line carried."""

from __future__ import annotations

import collections
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchgen.fake import FakeConfig, Rule, ThreadedFakeServer
from tests.cli.test_chains import EDITS, HERO, SCENES, SHEET, SHOT, by_name, edits
from tests.helpers.cli import SECRET, clean_env, cli, ledger_lines, spawn, wait_for
from tests.helpers.runs import made_per_job, run_batch


@pytest.fixture
def bserver() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=0.3)) as srv:
        yield srv


def google(text: str) -> str:
    return "provider: google\n" + text


def lines_seen(server: ThreadedFakeServer) -> dict[str, dict[str, Any]]:
    """Each batch line the fake ran, by the text of its last user turn."""
    out = {}
    for req in server.stats.requests_seen():
        if req.get("batch"):
            last = [t for t in req["turns"] if t["role"] == "user"][-1]
            out["\n".join(last["texts"])] = req
    return out


def waves(out: Path) -> list[int]:
    r = cli("status", out, "--json")
    assert r.code == 0, r.output
    return sorted(int(b.get("wave", 0)) for b in json.loads(r.stdout)["batches"])


def test_hero_sheet_then_its_scenes_in_a_second_wave(bserver: ThreadedFakeServer,
                                                     tmp_path: Path) -> None:
    m = tmp_path / "hero.yaml"
    m.write_text(google(HERO))
    out = tmp_path / "run"
    r = run_batch(bserver, m, out, "--wait")
    assert r.code == 0, r.output
    assert waves(out) == [1, 2]
    lines = by_name(out)
    sheet = lines["mara"]
    seen = lines_seen(bserver)
    for i, prompt in enumerate(SCENES):
        assert lines[f"scene{i}"]["parents"] == [
            {"job_id": sheet["job_id"], "sha256": sheet["sha256"]}]
        carried = seen[prompt]["carried"]  # through the Files API: the sheet's own upload
        assert [(c["role"], c["prompt"]) for c in carried] == [("user", SHEET)]
    assert set(made_per_job(out).values()) == {1}
    assert set(bserver.stats.batch_billed_by_prompt.values()) == {1}
    # A re-run of the finished chain sends nothing.
    created = bserver.stats.batches_created
    r = run_batch(bserver, m, out, "--wait")
    assert r.code == 0, r.output
    assert bserver.stats.batches_created == created


def test_waves_across_runs_carry_the_conversation(bserver: ThreadedFakeServer,
                                                  tmp_path: Path) -> None:
    m = tmp_path / "edits.yaml"
    m.write_text(google(edits(2)))
    out = tmp_path / "run"
    runs = 0
    while len([x for x in ledger_lines(out) if x["status"] == "succeeded"]) < 3 and runs < 20:
        # No --wait: each run collects what came back and submits the next wave (exit 5 says
        # batches are still running).
        r = run_batch(bserver, m, out)
        assert r.code in (0, 5), r.output
        runs += 1
        time.sleep(0.4)
    assert {x["name"] for x in ledger_lines(out) if x["status"] == "succeeded"} == {
        "shot", "edit0", "edit1"}
    assert waves(out) == [1, 2, 3]
    seen = lines_seen(bserver)
    night, rain = seen[EDITS[0]], seen[EDITS[1]]
    assert [t["role"] for t in night["turns"]] == ["user", "model", "user"]
    assert night["foreign_signatures"] == 0 and night["signatures_back"]
    assert [c["turn_prompt"] for c in rain["carried"]] == [SHOT, EDITS[0]]
    assert len(set(rain["signatures_back"])) == 2 and rain["foreign_signatures"] == 0


def test_a_blocked_parent_in_a_batch_fails_its_children_unsent(bserver: ThreadedFakeServer,
                                                              tmp_path: Path) -> None:
    bserver.config.rules = [Rule(match="cartographer", fault="block")]
    m = tmp_path / "hero.yaml"
    m.write_text(google(HERO))
    out = tmp_path / "run"
    run_batch(bserver, m, out, "--wait")
    kinds = collections.Counter(str(x["error"]["kind"]) for x in ledger_lines(out))  # type: ignore[index]
    assert kinds == {"blocked": 1, "parent_failed": 3}
    assert bserver.stats.batches_created == 1
    assert set(lines_seen(bserver)) == {SHEET}  # no scene was ever sent


def test_kill_9_between_the_waves_then_resume(bserver: ThreadedFakeServer,
                                              tmp_path: Path) -> None:
    bserver.config.batch_seconds = 1.0
    m = tmp_path / "hero.yaml"
    m.write_text(google(HERO))
    out = tmp_path / "run"
    args = ["run", str(m), "--out", str(out), "--base-url", bserver.url, "--mode", "batch",
            "--no-progress", "--poll-interval", "0.1", "--wait"]
    proc = spawn(*args, env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert wait_for(lambda: any(x["name"] == "mara" for x in ledger_lines(out)), timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    r = run_batch(bserver, m, out, "--wait")
    assert r.code == 0, r.output
    assert set(made_per_job(out).values()) == {1}
    assert set(bserver.stats.batch_billed_by_prompt.values()) == {1}, "an image billed twice"
    assert set(bserver.stats.batches_created_by_display_name.values()) == {1}
    lines = by_name(out)
    for i in range(3):
        assert lines[f"scene{i}"]["parents"][0]["sha256"] == lines["mara"]["sha256"]


def test_an_edited_parent_reruns_its_children_in_batch(bserver: ThreadedFakeServer,
                                                       tmp_path: Path) -> None:
    m = tmp_path / "hero.yaml"
    m.write_text(google(HERO))
    out = tmp_path / "run"
    assert run_batch(bserver, m, out, "--wait").code == 0
    m.write_text(google(HERO.replace("cartographer", "astronomer")))
    before = collections.Counter(bserver.stats.batch_billed_by_prompt)
    assert run_batch(bserver, m, out, "--wait").code == 0
    after = bserver.stats.batch_billed_by_prompt
    assert all(after[p] == before[p] + 1 for p in SCENES)
    assert after[SHEET.replace("cartographer", "astronomer")] == 1
