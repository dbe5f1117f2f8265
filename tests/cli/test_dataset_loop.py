"""The dataset loop (issue 21): --preview a spread sample, mark images, --redo-rejected them,
export what is good; through the CLI against the fake server."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import cli, ledger_lines, run_against
from tests.helpers.runs import status

ANIMALS = ["cat", "dog", "owl", "fox"]
STYLES = ["oil", "ink", "pixel"]


def matrix(path: Path) -> Path:
    path.write_text(
        "jobs:\n"
        "  - id: pet\n"
        "    prompt: a {animal} in {style}\n"
        f"    vars: {{animal: [{', '.join(ANIMALS)}], style: [{', '.join(STYLES)}]}}\n"
    )
    return path


def received(server: ThreadedFakeServer) -> list[str]:
    return sorted(server.stats.prompts.elements())


def parse(prompt: str) -> tuple[str, str]:
    m = re.fullmatch(r"a (\w+) in (\w+)", prompt)
    assert m, prompt
    return m.group(1), m.group(2)


# -- --preview -------------------------------------------------------------------------------


def test_preview_4_of_a_4x3_matrix_shows_every_value_of_both_vars(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = matrix(tmp_path / "m.yaml")
    out = tmp_path / "run"
    r = run_against(server, m, out, "--no-gallery", "--preview", "4")
    assert r.code == 0, r.output
    sent = [parse(p) for p in received(server)]
    assert len(sent) == 4
    assert {a for a, _ in sent} == set(ANIMALS)
    assert {s for _, s in sent} == set(STYLES)
    # the rest, priced, with the command that runs it (anyfast has no batch mode)
    line = next(x for x in r.stderr.splitlines() if x.startswith("the other "))
    assert line.startswith("the other 8 jobs: ~$")
    assert f"batchgen run {m} " in line and "--preview" not in line.split("to run them:")[1]
    # preview jobs are ordinary jobs: the full run sends only the 8 others
    server.stats.reset()
    r = run_against(server, m, out, "--no-gallery")
    assert r.code == 0, r.output
    rest = [parse(p) for p in received(server)]
    assert len(rest) == 8 and not set(rest) & set(sent)
    assert set(rest) | set(sent) == set(itertools.product(ANIMALS, STYLES))


def test_preview_prices_the_rest_at_batch_prices_where_the_provider_has_batch(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = matrix(tmp_path / "m.yaml")
    out = tmp_path / "run"
    r = run_against(server, m, out, "--no-gallery", "--preview", "3", provider="google")
    assert r.code == 0, r.output
    line = next(x for x in r.stderr.splitlines() if x.startswith("the other "))
    got = re.match(r"the other 9 jobs: ~\$([\d.]+) with --mode batch, ~\$([\d.]+) live; "
                   r"to run them: (.*) \(or live: (.*)\)$", line)
    assert got, line
    batch, live = float(got.group(1)), float(got.group(2))
    est = cli("estimate", m, "--out", out, "--json")
    assert est.code == 0, est.output
    assert live == pytest.approx(json.loads(est.stdout)["cost_usd"], abs=0.01)
    assert batch == pytest.approx(live / 2, abs=0.01)
    assert "--mode batch" in got.group(3) and "--preview" not in got.group(3)


def test_preview_spreads_plain_rows_over_the_manifest_and_skips_what_is_done(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n" + "".join(f"  - prompt: row {i}\n" for i in range(16)))
    out = tmp_path / "run"
    r = run_against(server, m, out, "--no-gallery", "--preview", "4")
    assert r.code == 0, r.output
    first = sorted(int(p.split()[1]) for p in received(server))
    assert first == [0, 4, 8, 12]  # spread, not the head of the list
    server.stats.reset()
    r = run_against(server, m, out, "--no-gallery", "--preview", "4")
    assert r.code == 0, r.output
    second = sorted(int(p.split()[1]) for p in received(server))
    assert len(second) == 4 and not set(second) & set(first)
    assert "the other 8 jobs" in r.stderr


@pytest.mark.parametrize("clash", [["--limit", "2"], ["--redo-rejected"]])
def test_preview_with_another_choice_of_jobs_is_bad_usage(
    server: ThreadedFakeServer, tmp_path: Path, clash: list[str]
) -> None:
    m = matrix(tmp_path / "m.yaml")
    r = run_against(server, m, tmp_path / "run", "--preview", "2", *clash)
    assert r.code == 2, r.output
    assert "--preview" in r.stderr and clash[0] in r.stderr
    assert server.stats.requests == 0 and not (tmp_path / "run").exists()


# -- mark, status, --redo-rejected ----------------------------------------------------------


def run_all(server: ThreadedFakeServer, tmp_path: Path) -> tuple[Path, Path, dict[str, dict]]:
    m = matrix(tmp_path / "m.yaml")
    out = tmp_path / "run"
    r = run_against(server, m, out, "--no-gallery")
    assert r.code == 0, r.output
    by_prompt = {str(x["prompt"]): x for x in ledger_lines(out)}
    server.stats.reset()
    return m, out, by_prompt


def job(by_prompt: dict[str, dict], prompt: str) -> str:
    return str(by_prompt[prompt]["job_id"])


def test_mark_writes_verdicts_and_status_counts_them(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    _, out, jobs = run_all(server, tmp_path)
    assert status(out)["review"] == {"accepted": 0, "rejected": 0, "unreviewed": 12}
    cat_oil, dog_ink = job(jobs, "a cat in oil"), job(jobs, "a dog in ink")
    r = cli("mark", out, "--reject", cat_oil, dog_ink, "--note", "extra legs")
    assert r.code == 0, r.output
    assert "rejected 2 images" in r.stderr and "--redo-rejected" in r.stderr
    r = cli("mark", out, "--accept", "pet-owl*")  # a glob, as --only takes
    assert r.code == 0, r.output
    lines = [json.loads(x) for x in (out / "reviews.jsonl").read_text().splitlines()]
    assert [(x["job_id"], x["verdict"], x["note"]) for x in lines[:2]] == sorted(
        [(cat_oil, "rejected", "extra legs"), (dog_ink, "rejected", "extra legs")])
    assert lines[0]["sha256"] == jobs["a cat in oil"]["sha256"]
    assert len(lines) == 5
    assert status(out)["review"] == {"accepted": 3, "rejected": 2, "unreviewed": 7}
    r = cli("mark", out, "--clear", dog_ink)
    assert r.code == 0, r.output
    assert status(out)["review"] == {"accepted": 3, "rejected": 1, "unreviewed": 8}
    text = cli("status", out).stdout
    assert "reviewed   3 accepted, 1 rejected, 8 unreviewed" in text
    assert server.stats.requests == 0


def test_mark_of_an_unknown_id_is_exit_2_and_writes_nothing(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    _, out, jobs = run_all(server, tmp_path)
    r = cli("mark", out, "--reject", job(jobs, "a cat in oil"), "no-such-job", "zebra-*")
    assert r.code == 2, r.output
    assert "'no-such-job'" in r.stderr and "'zebra-*'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (out / "reviews.jsonl").exists()
    r = cli("mark", out, job(jobs, "a cat in oil"))
    assert r.code == 2 and "--reject" in r.stderr
    r = cli("mark", out, "--reject", job(jobs, "a cat in oil"), "--accept", job(jobs, "a dog in ink"))
    assert r.code == 2 and "once" in r.stderr
    assert not (out / "reviews.jsonl").exists()


def test_redo_rejected_sends_exactly_the_rejected_jobs_and_keeps_the_old_images(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m, out, jobs = run_all(server, tmp_path)
    rejected = {"a cat in oil": "extra legs", "a fox in pixel": ""}
    for prompt, note in rejected.items():
        assert cli("mark", out, "--reject", job(jobs, prompt), "--note", note).code == 0
    old = {p: jobs[p] for p in rejected}
    r = run_against(server, m, out, "--no-gallery", "--redo-rejected")
    assert r.code == 0, r.output
    assert received(server) == sorted(rejected)
    latest = {str(x["job_id"]): x for x in ledger_lines(out)}
    for prompt, note in rejected.items():
        new = latest[job(jobs, prompt)]
        assert new["status"] == "succeeded"
        assert new["replaces"] == old[prompt]["sha256"] and new["note"] == note
        assert new["sha256"] != old[prompt]["sha256"]
        # the rejected image and its sidecar are kept aside, whole
        kept = list((out / "rejected").rglob(f"{job(jobs, prompt)}.*"))
        image = next(p for p in kept if p.suffix != ".json")
        assert {p.suffix for p in kept} == {image.suffix, ".json"}
        import hashlib

        assert hashlib.sha256(image.read_bytes()).hexdigest() == old[prompt]["sha256"]
        Image.open(image).verify()
        assert (out / str(new["outputs"][0])).is_file()
    # the new images are unreviewed; the redos are counted
    st = status(out)
    assert st["review"] == {"accepted": 0, "rejected": 0, "unreviewed": 12}
    assert st["redos"] == {"jobs": 2, "redos": 2}
    # nothing is rejected now: a second --redo-rejected sends nothing
    server.stats.reset()
    r = run_against(server, m, out, "--no-gallery", "--redo-rejected")
    assert r.code == 0, r.output
    assert "nothing to redo" in r.stderr and server.stats.requests == 0
    # rejected again, redone again: two redos for that job
    cat = job(jobs, "a cat in oil")
    assert cli("mark", out, "--reject", cat, "--note", "still wrong").code == 0
    r = run_against(server, m, out, "--no-gallery", "--redo-rejected")
    assert r.code == 0, r.output
    assert received(server) == ["a cat in oil"]
    assert len(list((out / "rejected").rglob(f"{cat}.*"))) == 4
    assert status(out)["redos"] == {"jobs": 2, "redos": 3}
    assert "redone     2 jobs (3 redos)" in cli("status", out).stdout


def test_redo_rejected_keeps_to_the_budget_and_the_limit(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m, out, jobs = run_all(server, tmp_path)
    ids = [job(jobs, p) for p in ("a cat in oil", "a dog in oil", "a owl in oil")]
    assert cli("mark", out, "--reject", *ids).code == 0
    est = cli("estimate", m, "--out", out, "--json", "--redo-rejected")
    assert est.code == 0, est.output
    plain = json.loads(cli("estimate", m, "--out", tmp_path / "fresh", "--json").stdout)
    assert json.loads(est.stdout)["jobs"] == 3
    assert json.loads(est.stdout)["cost_usd"] == pytest.approx(plain["cost_usd"] / 4, abs=1e-3)
    r = run_against(server, m, out, "--no-gallery", "--redo-rejected", "--limit", "1")
    assert r.code == 0, r.output
    assert "1 to run" in r.stderr
    assert server.stats.requests == 1
    spent = sum(float(x["cost_usd"]) for x in ledger_lines(out))  # type: ignore[arg-type]
    r = run_against(server, m, out, "--no-gallery", "--redo-rejected", "--budget", f"{spent:.4f}")
    assert r.code != 0 and "budget" in r.stderr
    assert server.stats.requests == 1
    r = run_against(server, m, out, "--no-gallery", "--redo-rejected")
    assert r.code == 0, r.output
    assert server.stats.requests == 3


# -- a kill -9 during a redo -----------------------------------------------------------------


def sha_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def kept_aside(out: Path) -> dict[str, str]:
    """sha256 -> image, of every image in rejected/."""
    return {sha_of(p): str(p) for p in (out / "rejected").rglob("*") if p.is_file()
            and p.suffix != ".json"}


def test_kill_9_during_a_redo_loses_nothing_and_pays_nothing_twice(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    from tests.helpers.cli import SECRET, clean_env, spawn, wait_for, write_manifest
    from tests.helpers.runs import run_args

    prompts = [f"redo {i}" for i in range(24)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    assert run_against(server, m, out, "--no-gallery").code == 0
    first = {str(x["prompt"]): x for x in ledger_lines(out)}
    rejected = {p: str(first[p]["sha256"]) for p in prompts[:16]}
    assert cli("mark", out, "--reject", *(str(first[p]["job_id"]) for p in rejected)).code == 0
    server.stats.reset()
    server.config.latency_s = 0.25

    def redone() -> list[dict]:
        return [x for x in ledger_lines(out) if x.get("replaces")]

    proc = spawn(*run_args(server, m, out, "--redo-rejected", "--concurrency", "4"),
                 env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert wait_for(lambda: len(redone()) >= 5)
    proc.send_signal(9)
    proc.wait(10)
    assert wait_for(lambda: server.stats.in_flight == 0)
    before = {str(x["prompt"]) for x in redone()}
    assert 5 <= len(before) < 16
    billed_before = server.stats.billed_images
    server.config.latency_s = 0.0
    r = run_against(server, m, out, "--no-gallery", "--redo-rejected")
    assert r.code == 0, r.output
    # nothing redone before the kill was sent again; the rest was sent once more at most
    sent = server.stats.prompts
    assert all(sent[p] == 1 for p in before), sent
    assert server.stats.billed_images - billed_before <= 16 - len(before)
    # every rejected job has a new image now; every rejected image is kept, whole
    latest = {str(x["prompt"]): x for x in ledger_lines(out)}
    aside = kept_aside(out)
    for p, old in rejected.items():
        assert latest[p]["status"] == "succeeded" and latest[p]["sha256"] != old
        assert latest[p]["replaces"] == old
        Image.open(out / str(latest[p]["outputs"][0])).load()
        assert old in aside, f"the rejected image of {p} is gone"
    for p in prompts[16:]:
        assert latest[p] == first[p]  # not rejected: not touched
    st = status(out)
    assert st["review"] == {"accepted": 0, "rejected": 0, "unreviewed": 24}
    assert st["redos"] == {"jobs": 16, "redos": 16}


def test_a_redo_saved_but_not_in_the_ledger_is_adopted_not_paid_again(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m, out, jobs = run_all(server, tmp_path)
    cat = job(jobs, "a cat in oil")
    assert cli("mark", out, "--reject", cat, "--note", "blurry").code == 0
    assert run_against(server, m, out, "--no-gallery", "--redo-rejected").code == 0
    # The state a kill between the redo's image rename and its ledger line leaves behind.
    ledger = out / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    assert json.loads(lines[-1])["replaces"]
    ledger.write_text("\n".join(lines[:-1]) + "\n")
    server.stats.reset()
    r = run_against(server, m, out, "--no-gallery", "--redo-rejected")
    assert r.code == 0, r.output
    assert server.stats.requests == 0
    last = ledger_lines(out)[-1]
    assert last["job_id"] == cat and last["adopted"] is True and last["note"] == "blurry"
    assert status(out)["redos"] == {"jobs": 1, "redos": 1}


# -- exports obey the verdicts ---------------------------------------------------------------


def exported(out: Path, dest: Path, *extra: str) -> dict[str, dict]:
    r = cli("export", out, "--format", "imagefolder", "--out", dest, "--no-progress", *extra)
    assert r.code == 0, r.output
    rows = [json.loads(x) for x in (dest / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        Image.open(dest / row["file_name"]).verify()
    return {row["prompt"]: row for row in rows}


def test_exports_leave_rejected_out_by_default_and_carry_the_verdicts(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    _, out, jobs = run_all(server, tmp_path)
    assert cli("mark", out, "--reject", job(jobs, "a cat in oil"), "--note", "two tails").code == 0
    assert cli("mark", out, "--accept", job(jobs, "a dog in ink"), job(jobs, "a owl in ink"),
               "--note", "lovely").code == 0
    rows = exported(out, tmp_path / "default")
    assert len(rows) == 11 and "a cat in oil" not in rows
    assert rows["a dog in ink"]["verdict"] == "accepted"
    assert rows["a dog in ink"]["verdict_note"] == "lovely"
    assert rows["a fox in oil"]["verdict"] == "unreviewed"
    rows = exported(out, tmp_path / "accepted", "--reviewed", "accepted")
    assert set(rows) == {"a dog in ink", "a owl in ink"}
    rows = exported(out, tmp_path / "all", "--reviewed", "all")
    assert len(rows) == 12
    assert (rows["a cat in oil"]["verdict"], rows["a cat in oil"]["verdict_note"]) == (
        "rejected", "two tails")
    r = cli("export", out, "--format", "imagefolder", "--out", tmp_path / "x", "--no-progress")
    assert "1 image rejected left out" in r.stderr


# -- report and the static gallery show the verdicts ----------------------------------------


def test_report_and_gallery_show_the_verdicts(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m, out, jobs = run_all(server, tmp_path)
    cat, dog = job(jobs, "a cat in oil"), job(jobs, "a dog in ink")
    assert cli("mark", out, "--reject", cat, "--note", "six <legs>").code == 0
    assert cli("mark", out, "--accept", dog).code == 0
    r = cli("report", out)
    assert r.code == 0, r.output
    assert "reviewed   1 accepted, 1 rejected, 10 unreviewed" in r.stdout
    assert f"  {cat}  six <legs>" in r.stdout
    rep = json.loads(cli("report", out, "--json").stdout)
    assert rep["review"] == {"accepted": 1, "rejected": 1, "unreviewed": 10}
    assert rep["rejected"] == [{"job_id": cat, "note": "six <legs>"}]
    r = cli("gallery", out)
    assert r.code == 0, r.output
    page = (out / "gallery.html").read_text()
    blob = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert blob and "six <legs>" not in page  # escaped inside the script
    cards = {c["id"]: c for c in json.loads(blob.group(1))}
    assert (cards[cat]["v"], cards[cat]["vn"]) == ("rejected", "six <legs>")
    assert cards[dog]["v"] == "accepted" and "v" not in cards[job(jobs, "a fox in oil")]
    assert "1 accepted, 1 rejected" in page
    # after the redo, the new image is unreviewed and names what it replaces
    assert run_against(server, m, out, "--no-gallery", "--redo-rejected").code == 0
    assert cli("gallery", out).code == 0
    page = (out / "gallery.html").read_text()
    blob = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert blob
    cards = {c["id"]: c for c in json.loads(blob.group(1))}
    assert "v" not in cards[cat] and cards[cat]["rp"] == jobs["a cat in oil"]["sha256"]


# -- --redo-rejected --mode batch ------------------------------------------------------------


def test_redo_rejected_in_batch_mode_even_when_collected_by_a_later_run(tmp_path: Path) -> None:
    from batchgen.exits import ExitCode
    from batchgen.fake import FakeConfig
    from tests.helpers.cli import SECRET, clean_env
    from tests.helpers.cli import write_manifest as plain_manifest

    def brun(*extra: str, code: int = 0) -> None:
        r = cli("run", m, "--out", out, "--base-url", srv.url, "--mode", "batch",
                "--provider", "google", "--no-progress", "--no-gallery", "--poll-interval", "0.1",
                *extra, env=clean_env(BATCHGEN_API_KEY=SECRET), timeout=90)
        assert r.code == code, r.output

    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=0.3)) as srv:
        prompts = [f"batch {i}" for i in range(6)]
        m = plain_manifest(tmp_path / "m.yaml", prompts)
        out = tmp_path / "run"
        brun("--wait")
        first = {str(x["prompt"]): x for x in ledger_lines(out)}
        redo = ["batch 1", "batch 4"]
        assert cli("mark", out, "--reject", *(str(first[p]["job_id"]) for p in redo),
                   "--note", "too dark").code == 0
        brun("--redo-rejected", code=ExitCode.RUNNING)  # submitted, not waited for
        brun("--wait")  # a plain run collects it
        assert sorted(srv.stats.batch_billed_by_prompt.elements()) == sorted(prompts + redo)
        latest = {str(x["prompt"]): x for x in ledger_lines(out)}
        for p in redo:
            assert latest[p]["replaces"] == first[p]["sha256"]
            assert latest[p]["note"] == "too dark" and latest[p]["mode"] == "batch"
            assert str(first[p]["sha256"]) in kept_aside(out)
        assert status(out)["review"] == {"accepted": 0, "rejected": 0, "unreviewed": 6}


def test_redo_rejected_in_a_new_folder_sends_nothing(server: ThreadedFakeServer,
                                                     tmp_path: Path) -> None:
    m = matrix(tmp_path / "m.yaml")
    r = run_against(server, m, tmp_path / "run", "--redo-rejected")
    assert r.code == 0, r.output
    assert "nothing to redo" in r.stderr and server.stats.requests == 0


def test_merge_carries_the_verdicts_and_the_rejected_images(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = matrix(tmp_path / "m.yaml")
    shards = [tmp_path / "s1", tmp_path / "s2"]
    for k, out in enumerate(shards, 1):
        assert run_against(server, m, out, "--no-gallery", "--shard", f"{k}/2").code == 0
    one, two = (str(ledger_lines(s)[0]["job_id"]) for s in shards)
    assert cli("mark", shards[0], "--reject", one, "--note", "bad").code == 0
    assert run_against(server, m, shards[0], "--no-gallery", "--shard", "1/2",
                       "--redo-rejected").code == 0
    assert cli("mark", shards[0], "--reject", one, "--note", "worse").code == 0
    assert cli("mark", shards[1], "--accept", two).code == 0
    merged = tmp_path / "merged"
    r = cli("merge", *shards, "--out", merged)
    assert r.code == 0, r.output
    assert status(merged)["review"] == {"accepted": 1, "rejected": 1, "unreviewed": 10}
    assert len(kept_aside(merged)) == 1
    r = run_against(server, m, merged, "--no-gallery", "--redo-rejected")
    assert r.code == 0, r.output
    assert status(merged)["redos"] == {"jobs": 1, "redos": 2}
    assert len(kept_aside(merged)) == 2
