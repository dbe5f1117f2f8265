"""``batchgen run`` as a subprocess against the fake server: formats, outcomes, exit codes, key."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from batchgen.fake import Rule, ThreadedFakeServer
from tests.helpers.cli import (
    REPO,
    SECRET,
    clean_env,
    cli,
    ledger_lines,
    run_against,
    write_manifest,
)
from tests.helpers.images import make_image


def assert_images_ok(out: Path, n: int) -> list[dict[str, object]]:
    lines = ledger_lines(out)
    ok = [r for r in lines if r["status"] == "succeeded"]
    assert len(ok) == n
    for rec in ok:
        (rel,) = rec["outputs"]  # type: ignore[misc]
        path = out / str(rel)
        with Image.open(path) as img:
            img.load()
            assert (img.width, img.height) == (rec["width"], rec["height"])
        assert path.resolve().is_relative_to(out.resolve())
        for key in ("job_id", "prompt", "attempts", "text", "usage", "cost_usd", "latency_s",
                    "finished_at"):
            assert key in rec
        assert float(rec["cost_usd"]) > 0.13  # type: ignore[arg-type]
    return ok


def no_secret_anywhere(out: Path, *texts: str) -> None:
    for text in texts:
        assert SECRET not in text
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_yaml_run_then_resume_sends_nothing(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a cat", "a dog", "a cow"], aspect_ratio="16:9")
    out = tmp_path / "run"
    r = run_against(server, m, out)
    assert r.code == 0, r.output
    ok = assert_images_ok(out, 3)
    assert {rec["prompt"] for rec in ok} == {"a cat", "a dog", "a cow"}
    assert server.stats.requests == 3
    meta = json.loads((out / "run.json").read_text())
    assert meta["jobs"] == 3 and meta["state"] == "finished"
    assert f"gallery: {out / 'gallery.html'}" in r.stderr
    # Each card shows its thumbnail, made by the store as the image landed, or, when that was
    # not done by the end of the run, the image itself (never a pass over every image then).
    page = (out / "gallery.html").read_text()
    cards = json.loads(page.split('id="data">', 1)[1].split("</script>")[0])
    assert len(cards) == 3
    for card in cards:
        assert card["th"] in (card["im"], card["im"].replace("images/", "thumbs/")[:-4] + ".jpg")
        with Image.open(out / card["th"]) as img:
            img.load()
    r2 = run_against(server, m, out)
    assert r2.code == 0, r2.output
    assert "nothing to do" in r2.stderr
    assert server.stats.requests == 3
    no_secret_anywhere(out, r.output, r2.output)


def test_csv_jsonl_and_matrix_formats(server: ThreadedFakeServer, tmp_path: Path) -> None:
    make_image(tmp_path / "ref1.png")
    make_image(tmp_path / "ref2.jpg", fmt="JPEG")
    csv = tmp_path / "m.csv"
    csv.write_text('prompt,images,aspect_ratio,image_size\n'
                   '"make it blue, please",ref1.png;ref2.jpg,1:1,2k\n'
                   'a plain prompt,,4:3,1K\n')
    r = run_against(server, csv, tmp_path / "csv")
    assert r.code == 0, r.output
    ok = assert_images_ok(tmp_path / "csv", 2)
    assert any([r["path"] for r in rec["references"]] == ["ref1.png", "ref2.jpg"] for rec in ok)  # type: ignore[attr-defined]
    assert any(rec["image_size"] == "2K" for rec in ok)

    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"prompt": "one", "count": 2}\n{"prompt": "two", "output_text": true}\n')
    r = run_against(server, jsonl, tmp_path / "jsonl")
    assert r.code == 0, r.output
    ok = assert_images_ok(tmp_path / "jsonl", 3)
    assert any(rec["text"] for rec in ok)

    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("jobs:\n  - prompt: 'a {animal} in {style} style'\n"
                      "    vars: {animal: [cat, dog], style: [oil, pixel art]}\n")
    r = run_against(server, matrix, tmp_path / "matrix")
    assert r.code == 0, r.output
    ok = assert_images_ok(tmp_path / "matrix", 4)
    assert {rec["prompt"] for rec in ok} == {
        f"a {a} in {s} style" for a in ("cat", "dog") for s in ("oil", "pixel art")}
    assert any(str(rec["job_id"]).startswith("cat-oil") for rec in ok)


def test_validation_errors_exit_2_and_send_nothing(server: ThreadedFakeServer,
                                                   tmp_path: Path) -> None:
    (tmp_path / "notimage.png").write_text("hello")
    m = tmp_path / "bad.yaml"
    m.write_text(
        "jobs:\n"
        "  - prompt: fine\n"
        "  - prompt: bad ratio\n"
        "    aspect_ratio: 7:3\n"
        "  - images: [notimage.png]\n"
        "    prompt: fake image\n"
        "  - id: ../escape\n"
        "    prompt: x\n"
    )
    r = run_against(server, m, tmp_path / "out")
    assert r.code == 2
    assert f"{m}:4: aspect_ratio" in r.stderr
    assert f"{m}:5" in r.stderr and "notimage.png" in r.stderr
    assert f"{m}:7: id" in r.stderr
    assert server.stats.requests == 0
    assert not (tmp_path / "out" / "ledger.jsonl").exists()
    v = cli("validate", m)
    assert v.code == 2 and v.stderr.count("batchgen:") >= 3


def test_validate_prints_plan(tmp_path: Path) -> None:
    r = cli("validate", REPO / "sample_manifests" / "quickstart.yaml")
    assert r.code == 0, r.output
    assert "jobs" in r.stdout and "images" in r.stdout


def test_missing_key_exit_2(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a cat"])
    r = cli("run", m, "--out", tmp_path / "o")
    assert r.code == 2
    assert "ANYFAST_API_KEY" in r.stderr and "BATCHGEN_API_KEY" in r.stderr
    r = cli("run", m, "--out", tmp_path / "o", "--provider", "google")
    assert r.code == 2 and "GEMINI_API_KEY" in r.stderr and "GOOGLE_API_KEY" in r.stderr


def test_fake_flag_needs_no_key(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a cat", "a dog"])
    r = cli("run", m, "--fake", "--no-progress", cwd=tmp_path)
    assert r.code == 0, r.output
    assert_images_ok(tmp_path / "jobs" / "m", 2)
    assert "jobs/m/images" in r.stderr


def test_permanent_errors_recorded_once(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.rules = [Rule(match="forbidden", fault="block"),
                           Rule(match="wordy", fault="text_only"),
                           Rule(match="invalid", fault="400")]
    m = write_manifest(tmp_path / "m.yaml", ["forbidden thing", "wordy thing", "invalid thing",
                                             "fine thing"])
    out = tmp_path / "run"
    r = run_against(server, m, out)
    assert r.code == 1, r.output
    by_prompt = {rec["prompt"]: rec for rec in ledger_lines(out)}
    assert by_prompt["forbidden thing"]["error"]["kind"] == "blocked"  # type: ignore[index]
    assert by_prompt["wordy thing"]["error"]["kind"] == "no_image"  # type: ignore[index]
    assert by_prompt["invalid thing"]["error"]["kind"] == "invalid_request"  # type: ignore[index]
    assert all(not rec["error"]["retryable"]  # type: ignore[index]
               for p, rec in by_prompt.items() if p != "fine thing")
    assert server.stats.requests == 4
    assert "--retry-failed" in r.stderr
    # Resuming does not resend permanent failures...
    assert run_against(server, m, out).code == 1
    assert server.stats.requests == 4
    # ...unless asked, and then only the kinds asked for.
    r = run_against(server, m, out, "--retry-failed", "blocked")
    assert server.stats.requests == 5
    assert server.stats.prompts["forbidden thing"] == 2


def test_retry_blocked_gives_more_tries(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.rules = [Rule(match="unlucky", fault="image_safety", times=2)]
    m = write_manifest(tmp_path / "m.yaml", ["unlucky roll"])
    r = run_against(server, m, tmp_path / "run", "--retry-blocked", "2")
    assert r.code == 0, r.output
    assert server.stats.requests == 3
    assert ledger_lines(tmp_path / "run")[0]["attempts"] == 3


def test_wrong_key_stops_after_one_request(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"prompt {i}" for i in range(40)])
    r = cli("run", m, "--out", tmp_path / "run", "--base-url", server.url, "--no-progress",
            "--concurrency", "32", env=clean_env(BATCHGEN_API_KEY="wrong-key-XYZ"))
    assert r.code == 4, r.output
    assert server.stats.requests == 1
    assert "auth" in r.stderr and "wrong-key-XYZ" not in r.output
    assert ledger_lines(tmp_path / "run") == []


def test_unknown_model_stops_the_run(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"prompt {i}" for i in range(10)])
    # A model with no price is refused before anything is sent (test_hostile); priced, it is
    # sent, and the 404 stops the run after one request.
    prices = tmp_path / "prices.json"
    prices.write_text('{"gemini-9-imaginary": {"output_image_per_1m": 120, "output_text_per_1m":'
                      ' 12, "input_per_1m": 2, "image_tokens": {"1K": 1120},'
                      ' "input_image_tokens": 560}}')
    r = run_against(server, m, tmp_path / "run", "--model", "gemini-9-imaginary",
                    "--concurrency", "16", "--prices", prices)
    assert r.code == 4, r.output
    assert server.stats.requests == 1
    assert "model_not_found" in r.stderr


def test_key_never_leaks_with_verbose_logs(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.script = ["503", "drop", "truncate", "429"]
    m = write_manifest(tmp_path / "m.yaml", ["a cat", "a dog"])
    out = tmp_path / "run"
    r = run_against(server, m, out, "-v")
    assert r.code == 0, r.output
    assert "attempt" in r.stderr
    no_secret_anywhere(out, r.output)
    # The anyfast provider puts the key in the URL; the URL in logs must be redacted.
    assert "key=" not in r.output or "key=REDACTED" in r.output


def test_status_reads_folder_alone(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.rules = [Rule(match="bad", fault="block")]
    m = write_manifest(tmp_path / "m.yaml", ["good one", "bad one", "good two"])
    out = tmp_path / "run"
    run_against(server, m, out)
    r = cli("status", out, "--json")
    assert r.code == 0, r.output
    st = json.loads(r.stdout)
    cost = round(sum(float(x["cost_usd"]) for x in ledger_lines(out)), 4)  # type: ignore[arg-type]
    assert st == {"jobs": 3, "succeeded": 2, "missing": 0, "failed": 1, "pending": 0,
                  "superseded": 0, "superseded_in_images": 0, "superseded_moved": 0,
                  "cost_usd": cost, "unsettled_usd": 0.0, "unsettled_requests": 0,
                  "lost_usd": 0.0, "lost_requests": 0, "errors": {"blocked": 1},
                  "review": {"accepted": 0, "rejected": 0, "unreviewed": 2},
                  "redos": {"jobs": 0, "redos": 0}}
    human = cli("status", out)
    assert "succeeded  2" in human.stdout and "blocked" in human.stdout
