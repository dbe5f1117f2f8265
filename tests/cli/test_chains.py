"""Chains through the CLI, live (issue 22): the fake server proves what each request carried
(its images' stamps name the answer and prompt; its signatures are its own, one per answer)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from batchgen.fake import Rule, ThreadedFakeServer
from tests.helpers.cli import SECRET, clean_env, cli, ledger_lines, spawn
from tests.helpers.runs import run_args, run_fast, status

SHEET = "character sheet of Mara the wandering cartographer"
SCENES = ("Mara reads a map in the rain", "Mara climbs a dune", "Mara sails at dawn")
HERO = "jobs:\n  - id: mara\n    prompt: " + SHEET + "\n" + "".join(
    f"  - id: scene{i}\n    prompt: {p}\n    images: ['@mara']\n" for i, p in enumerate(SCENES))
SHOT = "a product shot of a copper kettle"
EDITS = ("now at night", "add rain on the window", "make it a watercolour")


def edits(n: int) -> str:
    rows = [f"  - id: shot\n    prompt: {SHOT}\n"]
    for i, text in enumerate(EDITS[:n]):
        parent = "shot" if i == 0 else f"edit{i - 1}"
        rows.append(f"  - id: edit{i}\n    prompt: {text}\n    edit_of: {parent}\n")
    return "jobs:\n" + "".join(rows)


def by_name(out: Path) -> dict[str, dict[str, Any]]:
    return {str(r["name"]): r for r in ledger_lines(out)}


def seen(server: ThreadedFakeServer) -> dict[str, dict[str, Any]]:
    """Each request the fake saw, by the text of its last user turn."""
    out = {}
    for req in server.stats.requests_seen():
        last = [t for t in req["turns"] if t["role"] == "user"][-1]
        out["\n".join(last["texts"])] = req
    return out


def test_hero_sheet_and_three_scenes_carry_its_image(server: ThreadedFakeServer,
                                                     tmp_path: Path) -> None:
    m = tmp_path / "hero.yaml"
    m.write_text(HERO)
    out = tmp_path / "run"
    r = run_fast(server, m, out, "--concurrency", "4")
    assert r.code == 0, r.output
    lines = by_name(out)
    sheet = lines["mara"]
    assert sheet["status"] == "succeeded" and "parents" not in sheet
    requests = seen(server)
    for i, prompt in enumerate(SCENES):
        scene = lines[f"scene{i}"]
        assert scene["parents"] == [{"job_id": sheet["job_id"], "sha256": sheet["sha256"]}]
        assert scene["references"] == [{"path": "@mara", "sha256": sheet["sha256"]}]
        carried = requests[prompt]["carried"]
        assert [(c["role"], c["prompt"]) for c in carried] == [("user", SHEET)]
    # The sheet went first: no scene left before the sheet's answer came back.
    assert server.stats.prompts[SHEET] == 1
    # A re-run of the finished chain sends nothing.
    before = server.stats.requests
    r = run_fast(server, m, out)
    assert r.code == 0 and "nothing to do" in r.output, r.output
    assert server.stats.requests == before


def test_an_edit_continues_a_conversation_made_in_an_earlier_run(server: ThreadedFakeServer,
                                                                 tmp_path: Path) -> None:
    m = tmp_path / "edits.yaml"
    out = tmp_path / "run"
    m.write_text(edits(0))
    assert run_fast(server, m, out).code == 0
    shot = by_name(out)["shot"]
    first = server.stats.requests_seen()[-1]
    assert first["turns"][0]["texts"] == [SHOT]
    m.write_text(edits(2))  # the next day: two edits of the shot made yesterday
    r = run_fast(server, m, out)
    assert r.code == 0, r.output
    assert server.stats.prompts[SHOT] == 1, "the parent was not made again"
    lines = by_name(out)
    assert lines["shot"]["job_id"] == shot["job_id"]
    requests = seen(server)
    night, rain = requests[EDITS[0]], requests[EDITS[1]]
    assert [t["role"] for t in night["turns"]] == ["user", "model", "user"]
    assert night["turns"][0]["texts"] == [SHOT]
    assert night["foreign_signatures"] == 0 and len(night["signatures_back"]) >= 1
    assert [c["prompt"] for c in night["carried"] if c["role"] == "model"] == [SHOT]
    # An edit of an edit: both earlier answers, each with its own signature.
    assert [t["role"] for t in rain["turns"]] == ["user", "model", "user", "model", "user"]
    assert len(set(rain["signatures_back"])) == 2 and rain["foreign_signatures"] == 0
    assert set(night["signatures_back"]) < set(rain["signatures_back"])
    assert [c["turn_prompt"] for c in rain["carried"]] == [SHOT, EDITS[0]]
    assert lines["edit1"]["parents"] == [
        {"job_id": lines["edit0"]["job_id"], "sha256": lines["edit0"]["sha256"]}]


def test_a_blocked_parent_fails_its_children_unsent_and_once(server: ThreadedFakeServer,
                                                            tmp_path: Path) -> None:
    server.config.rules = [Rule(match="cartographer", fault="block")]
    m = tmp_path / "hero.yaml"
    m.write_text(HERO)
    out = tmp_path / "run"
    r = run_fast(server, m, out)
    assert r.code != 0 or "failed" in r.output
    assert server.stats.requests == 1  # the sheet only
    lines = ledger_lines(out)
    kinds = sorted(str(x["error"]["kind"]) for x in lines)  # type: ignore[index]
    assert kinds == ["blocked", "parent_failed", "parent_failed", "parent_failed"]
    assert all(float(x["cost_usd"]) == 0 for x in lines if x["name"] != "mara")  # type: ignore[arg-type]
    assert all(x["attempts"] == 0 for x in lines if x["name"] != "mara")
    run_fast(server, m, out)
    assert server.stats.requests == 1 and len(ledger_lines(out)) == 4  # failed once, not again


def test_a_transient_parent_failure_leaves_children_pending(server: ThreadedFakeServer,
                                                           tmp_path: Path) -> None:
    server.config.rules = [Rule(match="cartographer", fault="503")]
    m = tmp_path / "hero.yaml"
    m.write_text(HERO)
    out = tmp_path / "run"
    run_fast(server, m, out, "--max-attempts", "2")
    assert server.stats.requests == 2 and [x["name"] for x in ledger_lines(out)] == ["mara"]
    server.config.rules = []
    r = run_fast(server, m, out)
    assert r.code == 0, r.output
    assert {x["name"] for x in ledger_lines(out) if x["status"] == "succeeded"} == {
        "mara", "scene0", "scene1", "scene2"}


def test_editing_the_parent_reruns_its_children_and_only_them(server: ThreadedFakeServer,
                                                             tmp_path: Path) -> None:
    m = tmp_path / "hero.yaml"
    m.write_text(HERO + "  - id: other\n    prompt: an unrelated lighthouse\n")
    out = tmp_path / "run"
    assert run_fast(server, m, out).code == 0
    m.write_text(m.read_text().replace("wandering cartographer", "wandering astronomer"))
    server.stats.reset()
    r = run_fast(server, m, out)
    assert r.code == 0, r.output
    assert server.stats.requests == 4 and "an unrelated lighthouse" not in server.stats.prompts
    new_sheet = next(x for x in ledger_lines(out) if x["prompt"] == SHEET.replace(
        "cartographer", "astronomer"))
    for req in server.stats.requests_seen():
        if req["prompt"] in SCENES:
            assert [c["prompt"] for c in req["carried"]] == [new_sheet["prompt"]]
    # The old sheet's scenes are superseded jobs now, not chained ones of this manifest.
    chains = status(out)["chains"]
    assert chains == {"chained": 3, "superseded": 0, "parent_failed": 0}, chains


def test_a_parent_made_again_supersedes_its_children(server: ThreadedFakeServer,
                                                     tmp_path: Path) -> None:
    m = tmp_path / "hero.yaml"
    m.write_text(HERO)
    out = tmp_path / "run"
    assert run_fast(server, m, out).code == 0
    sheet = by_name(out)["mara"]
    r = cli("mark", out, "--reject", str(sheet["job_id"]), "--note", "wrong hat")
    assert r.code == 0, r.output
    assert run_fast(server, m, out, "--redo-rejected").code == 0
    redone = [x for x in ledger_lines(out) if x["name"] == "mara"][-1]
    assert redone["sha256"] != sheet["sha256"]
    st = status(out)
    assert st["chains"]["superseded"] == 3, st  # type: ignore[index]
    server.stats.reset()
    r = run_fast(server, m, out)
    assert r.code == 0, r.output
    assert sorted(server.stats.prompts) == sorted(SCENES)  # the three scenes, not the sheet
    for i in range(3):
        assert by_name(out)[f"scene{i}"]["parents"][0]["sha256"] == redone["sha256"]
    assert status(out)["chains"]["superseded"] == 0  # type: ignore[index]


def test_kill_9_between_parent_and_children_then_resume(server: ThreadedFakeServer,
                                                        tmp_path: Path) -> None:
    m = tmp_path / "hero.yaml"
    m.write_text(HERO)
    out = tmp_path / "run"
    # SIGKILL once the sheet is recorded, before any scene is sent.
    env = clean_env(BATCHGEN_API_KEY=SECRET, BATCHGEN_TEST_CRASH_AT="chain_parent_done")
    proc = spawn(*run_args(server, m, out), env=env)
    assert proc.wait(30) == -signal.SIGKILL
    assert [x["name"] for x in ledger_lines(out)] == ["mara"]
    assert server.stats.requests == 1
    r = run_fast(server, m, out)
    assert r.code == 0, r.output
    assert set(server.stats.billed_prompts.values()) == {1}, "an image paid for twice"
    assert sorted(server.stats.billed_prompts) == sorted([SHEET, *SCENES])
    lines = by_name(out)
    for i in range(3):
        assert lines[f"scene{i}"]["parents"][0]["sha256"] == lines["mara"]["sha256"]


def test_lineage_in_the_gallery_and_the_exports(server: ThreadedFakeServer,
                                                tmp_path: Path) -> None:
    import json

    import pyarrow.parquet as pq

    m = tmp_path / "hero.yaml"
    m.write_text(HERO)
    out = tmp_path / "run"
    assert run_fast(server, m, out).code == 0
    sheet = by_name(out)["mara"]
    r = cli("gallery", out)
    assert r.code == 0, r.output
    html = (out / "gallery.html").read_text()
    blob = html.split('<script type="application/json" id="data">', 1)[1].split("</script>")[0]
    cards = {c["nm"]: c for c in json.loads(blob)}
    assert cards["scene0"]["pa"] == [sheet["job_id"]] and "pa" not in cards["mara"]
    assert 'links("made from", r.pa)' in html and 'links("made into", CHILDREN[r.id])' in html
    r = cli("export", out, "--format", "parquet", "--out", tmp_path / "ds")
    assert r.code == 0, r.output
    table = pq.read_table(next((tmp_path / "ds").rglob("*.parquet")))
    rows = {row["name"]: row for row in table.to_pylist()}
    assert rows["scene1"]["parents"] == [{"job_id": sheet["job_id"], "sha256": sheet["sha256"]}]
    assert rows["mara"]["parents"] == []


def test_only_a_child_without_its_parent_is_left_out_and_said(server: ThreadedFakeServer,
                                                             tmp_path: Path) -> None:
    m = tmp_path / "hero.yaml"
    m.write_text(HERO)
    out = tmp_path / "run"
    r = run_fast(server, m, out, "--only", "scene*")
    assert "3 chained jobs left out" in r.stderr, r.output
    assert server.stats.requests == 0
    r = run_fast(server, m, out, "--only", "mara*")
    assert r.code == 0 and server.stats.requests == 1
    r = run_fast(server, m, out, "--only", "scene*")  # the parent is made now
    assert r.code == 0 and server.stats.requests == 4, r.output


def test_children_failed_with_their_parent_run_when_it_is_retried(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.rules = [Rule(match="cartographer", fault="block", times=1)]
    m = tmp_path / "hero.yaml"
    m.write_text(HERO)
    out = tmp_path / "run"
    run_fast(server, m, out)
    assert server.stats.requests == 1
    r = run_fast(server, m, out, "--retry-failed", "blocked")  # only the parent's kind
    assert r.code == 0, r.output
    assert {x["name"] for x in ledger_lines(out) if x["status"] == "succeeded"} == {
        "mara", "scene0", "scene1", "scene2"}
