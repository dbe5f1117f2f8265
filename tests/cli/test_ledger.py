"""Hand-edited and half-written run folders: tmp pairs left by a kill, deleted images, bad
amounts and a last record without its newline.

Every test runs the CLI as a subprocess against the fake server over HTTP and checks what the
fake billed against what the ledger says."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from PIL import Image

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import (
    cli,
    ledger_lines,
    write_manifest,
)
from tests.helpers.runs import (
    assert_billing_matches,
    matches_billing,
    run_fast,
    status,
    succeeded_prompts,
)

# -- 5. a finished .tmp pair is adopted, not paid again -----------------------------------------


def test_a_complete_tmp_pair_left_by_a_kill_is_adopted(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    prompts = ["keep me", "broken pair", "third"]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    assert run_fast(server, m, out).code == 0
    lines = ledger_lines(out)
    by_prompt = {str(r["prompt"]): r for r in lines}
    # The state a kill -9 leaves between a save's fsyncs and its renames: both files under
    # their .tmp names, no ledger line. For "broken pair" the image is not the sidecar's.
    for prompt in ("keep me", "broken pair"):
        rec = by_prompt[prompt]
        image = out / str(rec["outputs"][0])  # type: ignore[index]
        sidecar = image.with_suffix(".json")
        os.replace(image, str(image) + ".tmp")
        os.replace(sidecar, str(sidecar) + ".tmp")
    broken = out / (str(by_prompt["broken pair"]["outputs"][0]) + ".tmp")  # type: ignore[index]
    broken.write_bytes(broken.read_bytes()[:-10])
    kept = [r for r in lines if r["prompt"] == "third"]
    (out / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    billed = server.stats.billed_images

    r = run_fast(server, m, out)
    assert r.code == 0, r.output
    assert server.stats.billed_prompts["keep me"] == 1, "a finished image was paid again"
    assert server.stats.billed_prompts["broken pair"] == 2  # not verifiable: made again
    assert server.stats.billed_images == billed + 1
    assert succeeded_prompts(out) == set(prompts)
    assert not list((out / "images").rglob("*.tmp"))
    rec = {str(x["prompt"]): x for x in ledger_lines(out)}["keep me"]
    assert rec["adopted"] is True
    with Image.open(out / str(rec["outputs"][0])) as img:  # type: ignore[index]
        img.load()


# -- 6. deleted images are noticed ----------------------------------------------------------------


def test_deleted_images_are_missing_not_done(server: ThreadedFakeServer, tmp_path: Path) -> None:
    prompts = [f"lost {i}" for i in range(4)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    assert run_fast(server, m, out).code == 0
    shutil.rmtree(out / "images")
    r = run_fast(server, m, out)
    assert "4 recorded images are missing" in r.stderr and "--redo-missing" in r.stderr
    assert r.code == 1 and server.stats.billed_images == 4  # nothing paid without asking
    st = status(out)
    assert st["succeeded"] == 0 and st["missing"] == 4
    assert "missing    4" in cli("status", out).stdout
    est = cli("estimate", m, "--out", out, "--redo-missing", "--json")
    assert est.code == 0, est.output
    r = run_fast(server, m, out, "--redo-missing")
    assert r.code == 0, r.output
    assert server.stats.billed_images == 8
    st = status(out)
    assert st["succeeded"] == 4 and st["missing"] == 0
    assert matches_billing(server.stats.billed_usd, 8, float(st["cost_usd"]))  # type: ignore[arg-type]


# -- 8, 9. hand-edited ledgers ------------------------------------------------------------------


def test_a_bad_amount_in_the_ledger_is_an_input_error(server: ThreadedFakeServer,
                                                      tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"amount {i}" for i in range(3)])
    out = tmp_path / "run"
    assert run_fast(server, m, out).code == 0
    ledger = out / "ledger.jsonl"
    good = ledger.read_text().splitlines()
    requests = server.stats.requests
    for bad in ('"NaN"', "-1.5", '"inf"', '"many"'):
        lines = list(good)
        rec = json.loads(lines[1])
        lines[1] = json.dumps(rec).replace(f'"cost_usd": {rec["cost_usd"]}', f'"cost_usd": {bad}')
        assert bad in lines[1]
        ledger.write_text("\n".join(lines) + "\n")
        commands = [["status", out]]
        if bad == '"NaN"':  # every reader says so: status, report, and run before sending
            commands += [["report", out], ["status", out, "--json"]]
        for args in commands:
            r = cli(*args)
            assert r.code == 2, r.output
            assert "ledger.jsonl:2" in r.stderr and "cost_usd" in r.stderr, r.output
    r = run_fast(server, m, out, "--budget", "0.50")
    assert r.code == 2 and "ledger.jsonl:2" in r.stderr, r.output
    assert server.stats.requests == requests


def test_a_last_record_without_its_newline_is_kept(server: ThreadedFakeServer,
                                                    tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["first", "second"])
    out = tmp_path / "run"
    assert run_fast(server, m, out).code == 0
    ledger = out / "ledger.jsonl"
    ledger.write_bytes(ledger.read_bytes().rstrip(b"\n"))
    m2 = write_manifest(tmp_path / "m.yaml", ["first", "second", "third"])
    r = run_fast(server, m2, out)
    assert r.code == 0, r.output
    assert "torn" not in r.stderr
    assert succeeded_prompts(out) == {"first", "second", "third"}
    assert len(ledger_lines(out)) == 3
    assert_billing_matches(server, out)
