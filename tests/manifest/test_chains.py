"""Chains in the manifest (issue 22): ``@ID`` references and ``edit_of``, checked and resolved
before anything is sent; job ids that follow their parents. Real files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.errors import InputError
from batchgen.manifest import Manifest
from batchgen.spec import MAX_CHAIN_DEPTH, JobSpec
from tests.helpers.cli import cli

HERO = """\
jobs:
  - id: "{character}-sheet"
    prompt: "character sheet of {character}"
    vars:
      character: [Mara, Tom]
  - id: "{character}-scene"
    prompt: "{character} in the {place}"
    images: ["@{character}-sheet"]
    vars:
      character: [Mara, Tom]
      place: [forest, city]
  - id: shot
    prompt: a product shot of a red teapot
  - id: night
    edit_of: shot
    prompt: now at night
  - id: rain
    edit_of: night
    prompt: add rain
"""


def jobs_of(path: Path) -> list[JobSpec]:
    m = Manifest(path)
    m.validate()
    return list(m.iter_jobs())


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[tuple[int, str, str]]:
    with pytest.raises(InputError) as info:
        Manifest(path).validate()
    return [(p.line, p.field, p.message) for p in info.value.problems]


def test_templates_pair_each_scene_with_its_own_sheet(tmp_path: Path) -> None:
    jobs = jobs_of(write(tmp_path, HERO))
    by_name: dict[str, list[JobSpec]] = {}
    for job in jobs:
        by_name.setdefault(str(job.user_id), []).append(job)
    mara_sheet, = by_name["Mara-sheet"]
    tom_sheet, = by_name["Tom-sheet"]
    assert len(by_name["Mara-scene"]) == 2
    for scene in by_name["Mara-scene"]:
        assert [r.parent for r in scene.references] == [mara_sheet.job_id]
        assert scene.chain is not None and scene.chain.parents == (mara_sheet.job_id,)
    for scene in by_name["Tom-scene"]:
        assert [r.parent for r in scene.references] == [tom_sheet.job_id]
    # The job ids keep the vars the id template does not use.
    assert {j.job_id.rsplit("-", 1)[0] for j in by_name["Mara-scene"]} == {
        "Mara-scene-forest", "Mara-scene-city"}
    rain, = by_name["rain"]
    night, = by_name["night"]
    assert rain.chain is not None and rain.chain.edit_of == night.job_id
    assert rain.chain.depth == 2 and rain.chain.group == by_name["shot"][0].job_id
    # Parents always come before their children.
    order = [j.job_id for j in jobs]
    for job in jobs:
        for parent in job.chain.parents if job.chain else ():
            assert order.index(parent) < order.index(job.job_id)


def test_editing_a_parent_moves_its_descendants_not_the_other_way(tmp_path: Path) -> None:
    before = {j.user_id: j.job_id for j in jobs_of(write(tmp_path, HERO))}
    edited = HERO.replace("a product shot of a red teapot", "a product shot of a blue teapot")
    after = {j.user_id: j.job_id for j in jobs_of(write(tmp_path, edited, "b.yaml"))}
    assert after["shot"] != before["shot"]
    assert after["night"] != before["night"] and after["rain"] != before["rain"]
    assert after["Mara-sheet"] == before["Mara-sheet"]
    child = HERO.replace("add rain", "add snow")
    again = {j.user_id: j.job_id for j in jobs_of(write(tmp_path, child, "c.yaml"))}
    assert again["shot"] == before["shot"] and again["night"] == before["night"]
    assert again["rain"] != before["rain"]


def test_a_manifest_without_chains_keeps_its_ids(tmp_path: Path) -> None:
    plain = write(tmp_path, "jobs:\n  - id: shot\n    prompt: a product shot of a red teapot\n")
    chained = write(tmp_path, HERO, "h.yaml")
    shot = {j.user_id: j.job_id for j in jobs_of(chained)}["shot"]
    assert jobs_of(plain)[0].job_id == shot
    assert jobs_of(plain)[0].chain is None


@pytest.mark.parametrize(("text", "line", "field", "words"), [
    ("  - id: a\n    prompt: one\n    images: ['@nobody']\n", 1, "images", "no job has the id"),
    ("  - id: a\n    prompt: one\n    edit_of: a\n", 1, "edit_of", "this job itself"),
    ("  - id: a\n    prompt: one\n    count: 2\n  - id: b\n    prompt: two\n    edit_of: a\n",
     4, "edit_of", "names 2 jobs"),
    ("  - id: a\n    prompt: '{x}'\n    vars: {x: [p, q]}\n  - prompt: two\n"
     "    images: ['@a']\n", 4, "images", "names 2 jobs"),
    ("  - id: a\n    prompt: one\n    edit_of: b\n  - id: b\n    prompt: two\n    edit_of: a\n",
     1, "edit_of", "a cycle"),
    ("  - id: s\n    prompt: '{x}'\n    images: ['@{y}']\n    vars: {x: [p]}\n", 3, "images",
     "not one of the row's vars"),
])
def test_bad_chains_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, words: str
) -> None:
    path = write(tmp_path, "jobs:\n" + text)
    found = problems(path)
    assert any(ln == line + 1 and f == field and words in msg for ln, f, msg in found), found


def test_a_chain_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    rows = ["  - id: s0\n    prompt: step 0\n"]
    for i in range(1, MAX_CHAIN_DEPTH + 2):
        rows.append(f"  - id: s{i}\n    prompt: step {i}\n    edit_of: s{i - 1}\n")
    found = problems(write(tmp_path, "jobs:\n" + "".join(rows)))
    assert len(found) == 1 and "deep" in found[0][2] and found[0][1] == "edit_of"
    ok = write(tmp_path, "jobs:\n" + "".join(rows[:-1]), "ok.yaml")
    assert max(j.chain.depth for j in jobs_of(ok) if j.chain) == MAX_CHAIN_DEPTH


def test_validate_prints_depth_and_width_and_refuses_bad_chains(tmp_path: Path) -> None:
    r = cli("validate", write(tmp_path, HERO))
    assert r.code == 0, r.output
    assert "chains: 3" in r.stdout and "depth 2, width 2" in r.stdout
    bad = write(tmp_path, "jobs:\n  - id: a\n    prompt: one\n    images: ['@b']\n", "bad.yaml")
    r = cli("validate", bad)
    assert r.code == 2 and "bad.yaml:2: images: @b" in r.output, r.output


def test_csv_rows_chain_too(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,prompt,images,edit_of\nhero,a hero,,\nscene,hero at sea,@hero,\n"
                    "dusk,now at dusk,,hero\n")
    jobs = {j.user_id: j for j in jobs_of(path)}
    assert jobs["scene"].references[0].parent == jobs["hero"].job_id
    assert jobs["dusk"].chain is not None and jobs["dusk"].chain.edit_of == jobs["hero"].job_id


def test_a_shard_keeps_each_chain_whole(tmp_path: Path) -> None:
    from batchgen.settings import Selection

    jobs = [j for j in jobs_of(write(tmp_path, HERO)) if j.chain is not None]
    groups: dict[str, list[JobSpec]] = {}
    for job in jobs:
        assert job.chain is not None
        groups.setdefault(job.chain.group, []).append(job)
    assert len(groups) == 3
    for n in (2, 3, 5):
        for k in range(1, n + 1):
            sel = Selection(shard=(k, n))
            for members in groups.values():
                assert len({sel.covers(j) for j in members}) == 1  # all or none
        # Every job lands on exactly one shard.
        for job in jobs:
            assert sum(Selection(shard=(k, n)).covers(job) for k in range(1, n + 1)) == 1
