"""The review server's index of a run folder: read once, then only what was appended."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from batchgen.review.index import FolderIndex
from tests.helpers.cli import ledger_lines


def test_the_ledger_is_read_from_where_it_stopped(run_dir: Path) -> None:
    index = FolderIndex(run_dir)
    assert index.refresh()
    spend = index.spend
    assert not index.refresh()  # nothing new: nothing changed, the version stays
    ledger = run_dir / "ledger.jsonl"
    raw = ledger.read_bytes()
    at = raw.index(b'"cost_usd":0.1')  # a succeeded line's price
    # Rewrite bytes already read, in place: a reader starting over each time would see them.
    with ledger.open("r+b") as fh:
        fh.seek(at)
        fh.write(b'"cost_usd":9.1')
    assert ledger.read_bytes() != raw
    line = dict(ledger_lines(run_dir)[1])
    line["cost_usd"] = 0.25
    with ledger.open("ab") as fh:
        fh.write(orjson.dumps(line) + b"\n")
    version = index.version
    assert index.refresh() and index.version == version + 1
    assert index.spend == pytest.approx(spend + 0.25)
    # A ledger replaced by another file (merge writes a new one) is read again from the start.
    tmp = run_dir / "ledger.new"
    tmp.write_bytes(raw)
    os.replace(tmp, ledger)
    assert index.refresh()
    assert index.spend == pytest.approx(spend)
    assert sorted(r.job_id for r in index.ordered) == sorted(
        {str(d["job_id"]) for d in ledger_lines(run_dir)})


def test_bad_lines_are_skipped_not_fatal(run_dir: Path) -> None:
    index = FolderIndex(run_dir)
    index.refresh()
    before = index.counts()
    with (run_dir / "ledger.jsonl").open("ab") as fh:
        fh.write(b"not json\n")
        fh.write(orjson.dumps({"job_id": "../../etc/passwd", "status": "succeeded",
                               "outputs": ["../../etc/passwd"]}) + b"\n")
        fh.write(orjson.dumps({"job_id": "x-1", "status": "succeeded", "cost_usd": "NaN"})
                 + b"\n")
    with (run_dir / "reviews.jsonl").open("ab") as fh:
        fh.write(b'{"job_id": "x", "verdict": "maybe"}\n')
    index.refresh()
    assert "../../etc/passwd" not in index.rows and "x-1" not in index.rows
    assert {k: v for k, v in index.counts().items() if k != "state"} == {
        k: v for k, v in before.items() if k != "state"}
