"""Batches sized by what they return, and results downloads resumed (issue 23), through the CLI
against the fake's Batch API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from batchgen.batch.status import batch_rows
from batchgen.catalog import result_line_bytes
from batchgen.fake import FakeConfig, ThreadedFakeServer
from batchgen.settings import MAX_RESULT_BYTES
from tests.helpers.cli import SECRET, Result, ledger_lines
from tests.helpers.runs import run_batch


@pytest.fixture
def bserver() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=0.3)) as srv:
        yield srv


def write(tmp: Path, jobs: list[dict[str, object]]) -> Path:
    path = tmp / "m.yaml"
    path.write_text(yaml.safe_dump({"provider": "google", "jobs": jobs}))
    return path


def brun(srv: ThreadedFakeServer, m: Path, out: Path, *extra: str) -> Result:
    return run_batch(srv, m, out, *extra, timeout=120)


def test_batches_of_4k_images_are_split_by_expected_output(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    # A 4K image is ~32 MB of base64 in the results file: 1 GB holds 31 of them, so 80 jobs
    # make three batches though --batch-size (1000) would allow one.
    per_job = result_line_bytes("gemini-3-pro-image", "4K", "1:1")
    assert 30e6 < per_job < 34e6
    m = write(tmp_path, [{"prompt": f"big {i}", "image_size": "4K"} for i in range(80)])
    out = tmp_path / "out"
    r = brun(bserver, m, out, "--wait")
    assert r.code == 0, r.output
    rows = batch_rows(out)
    per_batch = MAX_RESULT_BYTES // per_job
    assert [b["jobs"] for b in rows] == [per_batch, per_batch, 80 - 2 * per_batch]
    journal = [json.loads(x) for x in (out / "batches.jsonl").read_text().splitlines()]
    expected = [ev["expected_result_bytes"] for ev in journal if "expected_result_bytes" in ev]
    assert len(expected) == 3 and max(expected) <= MAX_RESULT_BYTES
    assert sum(1 for x in ledger_lines(out) if x["status"] == "succeeded") == 80


def test_batch_size_still_caps_jobs_and_1k_batches_are_not_split(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = write(tmp_path, [{"prompt": f"small {i}"} for i in range(30)])
    out = tmp_path / "out"
    assert brun(bserver, m, out, "--batch-size", "20").code == 5
    assert [b["jobs"] for b in batch_rows(out)] == [20, 10]


@pytest.mark.parametrize("ranges", [True, False])
def test_a_dropped_results_download_resumes_where_it_stopped(
    bserver: ThreadedFakeServer, tmp_path: Path, ranges: bool
) -> None:
    # The first two answers to the results download hang up after 8 kB (of ~21 kB). With Range honoured
    # the client asks for the rest (206); without, it reads the file again, skipping what it
    # has. Either way every job is recorded once and nothing is billed twice.
    bserver.config.download_cut_bytes = 8_000
    bserver.config.download_cuts = 2
    bserver.config.download_ranges = ranges
    m = write(tmp_path, [{"prompt": f"cut {i}"} for i in range(12)])
    out = tmp_path / "out"
    r = brun(bserver, m, out, "--wait")
    assert r.code == 0, r.output
    files = bserver.server.files_api
    assert files.downloads_cut == 2
    assert files.range_requests == 2
    lines = [x for x in ledger_lines(out) if x["status"] == "succeeded"]
    assert sorted(str(x["job_id"]) for x in lines) == sorted({str(x["job_id"]) for x in lines})
    assert len(lines) == 12
    assert bserver.stats.batch_billed_images == 12
