"""``--shard K/N`` runs cover a manifest exactly once, and ``batchgen merge`` puts them together,
keeps the lines runs wrote, takes the locks and can be run again after an interruption."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from PIL import Image

from batchgen.fake import Rule, ThreadedFakeServer
from batchgen.manifest import Manifest
from batchgen.settings import shard_of
from tests.helpers.cli import (
    SECRET,
    clean_env,
    cli,
    ledger_lines,
    run_against,
    spawn,
    wait_for,
    write_manifest,
)
from tests.helpers.runs import ENV, matches_billing, run_args, run_fast, status


def latest(out: Path) -> dict[str, dict[str, object]]:
    return {str(x["job_id"]): x for x in ledger_lines(out)}


def test_shards_cover_every_job_once_and_merge(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.rules = [Rule(match="forbidden", fault="block")]
    prompts = [f"picture number {i}" for i in range(29)] + ["a forbidden picture"]
    manifest = write_manifest(tmp_path / "m.yaml", prompts, aspect_ratio="4:3")
    m = Manifest(manifest)
    m.validate()
    every = {job.job_id for job in m.iter_jobs()}
    assert len(every) == 30

    shards = [tmp_path / f"shard{k}" for k in (1, 2, 3)]
    seen: set[str] = set()
    for k, out in enumerate(shards, 1):
        r = run_against(server, manifest, out, "--shard", f"{k}/3")
        assert r.code in (0, 1), r.output
        ids = set(latest(out))
        assert ids and all(shard_of(i, 3) == k for i in ids)
        assert not ids & seen, "a job ran in two shards"
        seen |= ids
        assert json.loads((out / "run.json").read_text())["jobs"] == len(ids)
    assert seen == every
    assert server.stats.requests == 30

    # A later, separate attempt at one job that failed there: the shard's success must win.
    victim = next(i for i in sorted(every) if i.startswith("picture-number-7-"))
    server.config.rules = [Rule(match="picture number 7", fault="block")]
    extra = tmp_path / "extra"
    assert run_against(server, manifest, extra, "--only", victim).code == 1
    assert latest(extra)[victim]["status"] == "failed"

    merged = tmp_path / "merged"
    inputs = [*shards, extra]
    r = cli("merge", *inputs, "--out", merged)
    assert r.code == 0, r.output
    records = latest(merged)
    assert set(records) == every
    assert records[victim]["status"] == "succeeded"
    failed = {i for i, x in records.items() if x["status"] == "failed"}
    assert len(failed) == 1 and records[failed.pop()]["prompt"] == "a forbidden picture"

    for rec in records.values():
        if rec["status"] != "succeeded":
            continue
        (rel,) = rec["outputs"]  # type: ignore[misc]
        image = merged / str(rel)
        with Image.open(image) as img:
            img.load()
            assert (img.width, img.height) == (rec["width"], rec["height"])
        assert image.with_suffix(".json").is_file()
    # Same filesystem: hard links, not copies.
    some = next(iter(sorted((merged / "images").rglob("*.png"))))
    rel = some.relative_to(merged)
    origin = next(s / rel for s in shards if (s / rel).exists())
    assert os.stat(some).st_ino == os.stat(origin).st_ino

    # No ledger line is lost, so spend and attempts stay true; each job's winner is its last.
    all_lines = [x for d in inputs for x in ledger_lines(d)]
    st = json.loads(cli("status", merged, "--json").stdout)
    assert st["jobs"] == 30 and st["succeeded"] == 29 and st["failed"] == 1 and st["pending"] == 0
    assert st["cost_usd"] == round(sum(float(x["cost_usd"]) for x in all_lines), 4)  # type: ignore[arg-type]
    meta = json.loads((merged / "run.json").read_text())
    assert meta["merged_from"] == [str(p) for p in inputs] and meta["state"] == "merged"

    # Merging again is harmless: nothing doubles, files already there are kept.
    again = cli("merge", *inputs, "--out", merged)
    assert again.code == 0 and "0 linked, 0 copied, 58 already there" in again.stdout
    assert len(ledger_lines(merged)) == len(all_lines)
    assert cli("report", merged).code == 0

    # A resumed run on the merged folder has nothing left but the permanent failure.
    r = run_against(server, manifest, merged)
    assert r.code == 1 and "nothing to do" in r.stderr


def test_merge_refuses_to_overwrite_an_input_or_a_run(server: ThreadedFakeServer,
                                                      tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", [f"image {i}" for i in range(12)])
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_against(server, manifest, a, "--shard", "1/2").code == 0
    assert run_against(server, manifest, b, "--shard", "2/2").code == 0
    before = (a / "ledger.jsonl").read_bytes()
    r = cli("merge", a, b, "--out", a)
    assert r.code == 2 and "one of the inputs" in r.stderr
    r = cli("merge", a, "--out", b)
    assert r.code == 2 and "a run of its own" in r.stderr
    assert (a / "ledger.jsonl").read_bytes() == before
    r = cli("merge", a, tmp_path, "--out", tmp_path / "c")
    assert r.code == 2 and "not a batchgen run folder" in r.stderr


# -- 10, 11. merge -----------------------------------------------------------------------------


def test_merge_keeps_the_lines_runs_wrote_in_the_merged_folder(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.rules = [Rule(match="flaky", fault="504", times=1)]
    prompts = [f"merge me {i}" for i in range(8)] + ["flaky one"]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "all"
    assert run_fast(server, m, a, "--shard", "1/2", "--max-attempts", "1").code in (0, 1)
    assert run_fast(server, m, b, "--shard", "2/2", "--max-attempts", "1").code in (0, 1)
    assert cli("merge", a, b, "--out", merged).code == 0
    # Runs in the merged folder: the failed (billed) timeout is retried, new jobs are added.
    m2 = write_manifest(tmp_path / "m.yaml", [*prompts, "added 1", "added 2"])
    r = run_fast(server, m2, merged)
    assert r.code == 0, r.output
    before = status(merged)
    lines_before = len(ledger_lines(merged))
    assert before["succeeded"] == 11
    assert matches_billing(server.stats.billed_usd, server.stats.billed_images,
                           float(before["cost_usd"]))  # type: ignore[arg-type]
    for _ in range(2):  # merging again, and again, changes nothing
        r = cli("merge", a, b, "--out", merged)
        assert r.code == 0, r.output
        assert status(merged) == before
        assert len(ledger_lines(merged)) == lines_before
    r = run_fast(server, m2, merged)
    assert r.code == 0 and "nothing to do" in r.stderr


def test_merge_takes_the_locks(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.latency_s = 1.0
    m = write_manifest(tmp_path / "m.yaml", [f"locked {i}" for i in range(6)])
    a, merged = tmp_path / "a", tmp_path / "all"
    assert run_fast(server, m, a, "--limit", "2").code == 0
    assert cli("merge", a, "--out", merged).code == 0
    for busy in (merged, a):  # a run writing to the merged folder, or to an input
        proc = spawn(*run_args(server, m, busy, "--concurrency", "2"), env=ENV)
        try:
            assert wait_for(lambda: server.stats.in_flight >= 1, timeout=30)
            before = (merged / "ledger.jsonl").read_bytes()
            r = cli("merge", a, "--out", merged)
            assert r.code == 2 and "run is using this folder" in r.stderr, r.output
        finally:
            proc.communicate(timeout=60)
        assert proc.returncode == 0
        # The merge replaced nothing under the run: its appends all landed in the same file.
        assert (merged / "ledger.jsonl").read_bytes().startswith(before)
        assert status(busy)["succeeded"] == 6
    assert cli("merge", a, "--out", merged).code == 0


def test_an_interrupted_merge_can_be_run_again(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"interrupted {i}" for i in range(6)])
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "all"
    assert run_fast(server, m, a, "--shard", "1/2").code == 0
    assert run_fast(server, m, b, "--shard", "2/2").code == 0
    assert cli("merge", a, b, "--out", merged).code == 0
    complete = status(merged)
    # What a kill (or a full disk) between the ledger and the final run.json leaves behind:
    # run.json still says "merging".
    meta = json.loads((merged / "run.json").read_text())
    meta["state"] = "merging"
    del meta["jobs"]
    (merged / "run.json").write_text(json.dumps(meta))
    r = cli("merge", a, b, "--out", merged)
    assert r.code == 0, r.output
    assert status(merged) == complete
    # And the state before the ledger was replaced: only run.json written.
    shutil.rmtree(merged)
    merged.mkdir()
    (merged / "run.json").write_text(json.dumps(meta))
    assert cli("merge", a, b, "--out", merged).code == 0
    assert status(merged) == complete


def test_merge_refuses_a_shard_whose_batches_may_still_deliver(
        server: ThreadedFakeServer, tmp_path: Path) -> None:
    """Issue 19, 2: merged, jobs in a running batch read as pending, were sent live, and the
    batch delivered them too: paid twice. The merge refuses, naming the batch."""
    server.config.batch_seconds = 600  # still running when the merge is tried
    manifest = write_manifest(tmp_path / "m.yaml", [f"batch or live {i}" for i in range(8)])
    batch, live, merged = tmp_path / "batch", tmp_path / "live", tmp_path / "merged"
    r = run_against(server, manifest, batch, "--shard", "1/2", "--mode", "batch",
                    "--poll-interval", "0.1", provider="google")
    assert r.code == 5, r.output
    assert run_against(server, manifest, live, "--shard", "2/2", provider="google").code == 0
    r = cli("merge", batch, live, "--out", merged)
    assert r.code == 2, r.output
    journal = [json.loads(x) for x in (batch / "batches.jsonl").read_text().splitlines()]
    name = next(e["name"] for e in journal if e.get("name"))
    assert str(batch) in r.stderr and name in r.stderr and "paid for again" in r.stderr
    assert not (merged / "ledger.jsonl").exists()
    # Once the batch is over (cancelled here), the merge goes ahead and the merged folder sends
    # only what nobody made: no prompt is billed twice across live and batch.
    r = cli("cancel", batch, "--yes", "--base-url", server.url, env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert r.code == 0, r.output
    assert cli("merge", batch, live, "--out", merged).code == 0
    r = run_against(server, manifest, merged, provider="google")
    assert r.code == 0, r.output
    billed = {**server.stats.billed_prompts}
    for prompt, n in server.stats.batch_billed_by_prompt.items():
        billed[prompt] = billed.get(prompt, 0) + n
    assert len(billed) == 8 and set(billed.values()) == {1}, billed
