"""Planning in one pass: job ids that never change, the plan counted during validation, the
run folder left alone by bad input, and the gallery refresh skipped on big folders."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import random
from pathlib import Path

import orjson
import pytest
from PIL import Image

from batchgen.folder.layout import subdir
from batchgen.manifest import Manifest
from batchgen.planning.plan import RETRYABLE, SUCCEEDED, LedgerIndex, Plan, PlanCounts
from batchgen.pricing import PriceTable
from batchgen.reporting.gallery import REFRESH_MAX_RECORDS, build_gallery
from batchgen.settings import Selection
from batchgen.spec import JobSpec

from .conftest import cli

ROWS = [
    {"prompt": "a small watercolor of a fox, study number 1"},
    {"prompt": "  Café crème à la française  "},
    {"prompt": "日本語のプロンプト"},
    {"prompt": "!!!"},
    {"prompt": "{literal} braces and 100% & more"},
    {"prompt": "tabs\tand\u2003spaces\u00a0here\x1cx y z w"},
    {"prompt": "a fox", "count": 3},
    {"prompt": "a fox", "id": "user id 7!"},
    {"prompt": "a fox", "aspect_ratio": "16:9", "image_size": "2k", "temperature": 1, "seed": 42},
    {"prompt": "a {color} {animal}", "vars": {"animal": ["cat", 3, 1.5],
                                             "color": ["réd", "blue!!"]}, "count": 2},
    {"prompt": "a fox", "output_text": True, "model": "gemini-2.5-flash-image"},
    {"prompt": "a fox", "temperature": 0.7, "id": "Ünïcode-1"},
    {"prompt": "a fox with nulls", "seed": None, "aspect_ratio": None},
]
# Made by the code before the one-pass planning and its fast paths: ids must never change, or
# every resumed run would pay for its images again.
JSONL_IDS = [
    "a-small-watercolor-of-a-fox-ad8ff0a72b", "cafe-creme-a-la-francaise-1ac10ee217",
    "job-1e79ef2a39", "job-417bc62adf", "literal-braces-and-100-more-5e2583a72b",
    "tabs-and-spaces-here-x-y-77e2e63e1b", "a-fox-6be142ec67", "a-fox-1-689207a4fe",
    "a-fox-2-2b5e785b83", "user-id-7-bfe012b7eb", "a-fox-54be9a6edb", "cat-red-17c7246c1f",
    "cat-red-1-285c064ac7", "cat-blue-b4bd9c3e4b", "cat-blue-1-c58881bb8d", "3-red-015c22b727",
    "3-red-1-5125eed536", "3-blue-60a9680ee4", "3-blue-1-52f7daf264", "1-5-red-b30cc065fc",
    "1-5-red-1-5077afdc4a", "1-5-blue-3492eedcca", "1-5-blue-1-6a558ba310", "a-fox-e580196a8e",
    "n-code-1-1c8a223a8a", "a-fox-with-nulls-5759fe0053",
]  # fmt: skip
CSV = 'prompt,count,id\nhello world,,\n"Hello, World!",2,\nplain csv row,,row-1\n'
CSV_IDS = ["hello-world-79522d2a0f", "hello-world-0b76300bd9", "hello-world-1-6b25456669",
           "row-1-08b7ed1d8f"]


def _jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), "utf-8")
    return path


def test_job_ids_are_unchanged(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(CSV)
    for path, ids in ((_jsonl(tmp_path / "m.jsonl"), JSONL_IDS), (csv, CSV_IDS)):
        assert [j.job_id for j in Manifest(path).iter_jobs()] == ids  # without validate()
        m = Manifest(path)
        seen: list[JobSpec] = []
        summary = m.validate(visit=seen.append)
        assert [j.job_id for j in seen] == ids and summary.jobs == len(ids)
        assert list(m.iter_jobs()) == seen  # the trusted second pass gives the same specs


def test_visited_specs_are_ordinary_frozen_specs(tmp_path: Path) -> None:
    seen: list[JobSpec] = []
    Manifest(_jsonl(tmp_path / "m.jsonl")).validate(visit=seen.append)
    for job in seen:
        fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(JobSpec)}
        twin = JobSpec(**fields)
        assert job == twin and hash(job) == hash(twin) and repr(job) == repr(twin)
        with pytest.raises(dataclasses.FrozenInstanceError):
            job.prompt = "changed"  # type: ignore[misc]


def _reference_count(plan: Plan, jobs: list[JobSpec], price: PriceTable) -> PlanCounts:
    """The plan count as it was written before it became a per-job callback."""
    c = PlanCounts()
    for job in jobs:
        if not plan.selection.in_scope(job.job_id):
            continue
        c.total += 1
        state = plan.index.get(job.job_id)
        if state is None:
            c.new += 1
        if plan.wants(job):
            if plan.selection.limit is None or c.pending < plan.selection.limit:
                c.pending += 1
                c.by_size[job.image_size] = c.by_size.get(job.image_size, 0) + 1
                c.estimate_usd += price.estimate(job)
        elif state == SUCCEEDED:
            c.done += 1
        elif state is not None and state != RETRYABLE:
            c.failed_skipped += 1
    return c


@pytest.mark.parametrize(
    "selection",
    [
        Selection(),
        Selection(limit=3),
        Selection(only="a-fox*"),
        Selection(retry_failed=()),
        Selection(retry_failed=("blocked",), only="*-1-*"),
        Selection(shard=(2, 3), limit=4),
    ],
    ids=repr,
)
def test_counting_during_validation_matches_a_pass_of_its_own(
    tmp_path: Path, selection: Selection
) -> None:
    path = _jsonl(tmp_path / "m.jsonl")
    jobs = list(Manifest(path).iter_jobs())
    rng = random.Random(7)
    states = [SUCCEEDED, RETRYABLE, "blocked", "no_image", None]
    index = LedgerIndex()
    for job in jobs:
        state = rng.choice(states)
        if state is not None:
            index.states[job.job_id] = state
    prices = PriceTable.load(None)
    m = Manifest(path)
    plan = Plan(m.iter_jobs, index, selection, prices.estimate)
    m.validate(visit=plan.count_job)
    expected = _reference_count(plan, jobs, prices)
    assert plan.counts == expected
    assert Plan(m.iter_jobs, index, selection).count(prices.estimate) == expected
    sent = [j.job_id for j in plan]
    assert len(sent) == expected.pending


BAD = '{"prompt": "fine"}\n{"prompt": "bad ratio", "aspect_ratio": "7:3"}\n'


def test_bad_input_creates_no_run_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD)
    out = tmp_path / "out"
    r = cli("run", bad, "--out", out, "--fake", "--no-progress")
    assert r.code == 2 and f"{bad}:2: aspect_ratio" in r.stderr
    assert not out.exists()


def test_manifest_problems_come_before_a_busy_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "ledger.jsonl").write_bytes(b"")
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(BAD)
        r = cli("run", bad, "--out", out, "--fake", "--no-progress")
        assert r.code == 2 and f"{bad}:2: aspect_ratio" in r.stderr
        assert "another batchgen run" not in r.stderr
        good = tmp_path / "good.jsonl"
        good.write_text('{"prompt": "fine"}\n')
        r = cli("run", good, "--out", out, "--fake", "--no-progress")
        assert r.code == 2 and "another batchgen run is using this folder" in r.stderr
    finally:
        os.close(fd)
    assert (out / "ledger.jsonl").read_bytes() == b""


def _ledger_line(job_id: str, outputs: list[str]) -> bytes:
    return orjson.dumps({"job_id": job_id, "status": "succeeded", "prompt": job_id,
                         "attempts": 1, "outputs": outputs, "cost_usd": 0.01}) + b"\n"


@pytest.mark.parametrize("records", [REFRESH_MAX_RECORDS - 1, REFRESH_MAX_RECORDS + 1])
def test_run_skips_the_gallery_refresh_on_big_folders(tmp_path: Path, records: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with (out / "ledger.jsonl").open("wb") as fh:
        for i in range(records):
            fh.write(_ledger_line(f"old-{i}", [f"images/old-{i}.png"]))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"prompt": "one more"}\n')
    r = cli("run", manifest, "--out", out, "--fake", "--no-progress", timeout=120)
    assert r.code == 0, r.output
    hint = f"to browse the images: batchgen gallery {out}"
    if records > REFRESH_MAX_RECORDS:
        assert hint in r.stderr and not (out / "gallery.html").exists()
    else:
        assert hint not in r.stderr and (out / "gallery.html").is_file()


def test_gallery_shows_only_images_inside_the_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "images").mkdir(parents=True)
    for name in ("inside.png", "../outside.png"):
        Image.new("RGB", (32, 32), (200, 10, 10)).save(run_dir / "images" / name)
    (run_dir / "ledger.jsonl").write_bytes(
        _ledger_line("inside", ["images/inside.png"])
        + _ledger_line("dotted", ["images/../images/inside.png"])
        + _ledger_line("outside", ["images/../../run/../outside.png"])
        + _ledger_line("absolute", [str(tmp_path / "outside.png")])
    )
    res = build_gallery(run_dir)
    assert (res.cards, res.succeeded, res.missing) == (4, 4, 2)
    html = res.path.read_text("utf-8")
    blob = html.split('<script type="application/json" id="data">', 1)[1].split("</script>")[0]
    cards = {c["id"]: c for c in json.loads(blob)}
    assert cards["inside"]["im"] == "images/inside.png" == cards["dotted"]["im"]
    assert cards["inside"]["th"] == f"thumbs/{subdir('inside')}/inside.jpg"
    assert cards["outside"].get("miss") and "im" not in cards["outside"]
    assert cards["absolute"].get("miss") and "im" not in cards["absolute"]


def test_manifest_problems_come_before_bad_prices(tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text("[]")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(BAD)
    out = tmp_path / "out"
    r = cli("run", bad, "--out", out, "--fake", "--no-progress", "--prices", prices)
    assert r.code == 2 and f"{bad}:2: aspect_ratio" in r.stderr and "prices" not in r.stderr
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "fine"}\n')
    for command in ("run", "estimate"):
        r = cli(command, good, "--out", out, "--prices", prices, *(["--fake"] * (command == "run")))
        assert r.code == 2 and "prices must be a JSON object" in r.stderr
    assert not out.exists()
