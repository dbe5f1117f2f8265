"""``status``'s own ledger pass (reporting/status.py reads only the fields it counts): the same
counts as the full records give, the same lines kept, skipped and refused."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
from PIL import Image

from batchgen.errors import InputError
from batchgen.folder import ledger as ledger_mod
from batchgen.folder.layout import subdir
from batchgen.folder.ledger import iter_ledger, read_ledger
from batchgen.folder.runfolder import read_meta
from batchgen.reporting.status import load_status, status_from_latest
from batchgen.spec import JOB_ID_FORM


def _line(job_id: str, ok: bool = True, **more: object) -> bytes:
    rec: dict[str, object] = {
        "job_id": job_id, "status": "succeeded" if ok else "failed", "prompt": job_id,
        "attempts": 1, "cost_usd": 0.125 if ok else 0.0,
        "outputs": [f"images/{subdir(job_id)}/{job_id}.png"] if ok else [],
        "error": None if ok else {"kind": "blocked", "retryable": False, "http_status": 200,
                                  "message": "SAFETY"},
    }
    rec.update(more)
    return orjson.dumps(rec) + b"\n"


def _image(run: Path, job_id: str) -> None:
    path = run / "images" / subdir(job_id) / f"{job_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)


def _full_path_status(run: Path) -> dict[str, object]:
    """The same folder counted from full records, the way `report` does."""
    latest = read_ledger(run / "ledger.jsonl")
    cost = sum(r.cost_usd for r in iter_ledger(run / "ledger.jsonl"))  # every line is spend
    return status_from_latest(run, read_meta(run), latest, cost).to_json()


def test_the_fast_id_check_is_the_specs() -> None:
    assert ledger_mod.JOB_ID_FORM.pattern == JOB_ID_FORM.pattern


def test_counts_match_the_full_records_and_odd_lines_are_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for job_id in ("a", "b", "c"):
        _image(run, job_id)
    lines = [
        _line("a"), _line("b"), _line("c"), _line("d"),  # d's image was never there: missing
        _line("e", ok=False),
        b"\n",  # blank: skipped quietly
        _line("f", status="maybe"),  # not a status: skipped with a warning
        b'{"status": "succeeded"}\n',  # no job id: skipped with a warning
        b"[1, 2]\n",  # JSON, not an object
        _line("e"),  # e's last line wins: succeeded, its image missing
        _line("b", ok=False),  # b failed on a redo: not succeeded any more
        _line("g")[:30],  # torn last line
    ]
    (run / "ledger.jsonl").write_bytes(b"".join(lines))
    with caplog.at_level(logging.WARNING):
        got = load_status(run).to_json()
    warned = [r.getMessage() for r in caplog.records]
    assert got == _full_path_status(run)
    assert (got["succeeded"], got["missing"], got["failed"]) == (2, 2, 1)
    assert got["errors"] == {"blocked": 1}
    assert len(warned) == 4 and any("torn last" in w and ":12:" in w for w in warned), warned


def test_no_image_left_counts_every_recorded_image_missing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    (run / "ledger.jsonl").write_bytes(
        _line("a") + _line("b")
        + _line("abs", outputs=[str(outside)])  # looked for where it points: there
        + _line("dotted", outputs=["images/../../elsewhere.png"])  # also there
        + _line("none", outputs=[])  # nothing recorded, nothing missing
    )
    got = load_status(run).to_json()
    assert got == _full_path_status(run)
    assert (got["succeeded"], got["missing"]) == (2, 3)


@pytest.mark.parametrize("bad, message", [
    (_line("a", cost_usd="NaN"), "cost_usd"),
    (b'{"job_id": "a", "status": "succeeded", "cost_usd": NaN}\n', "cost_usd"),
    (_line("../etc"), "job_id"),
    (b'{"job_id": 7, "status": "succeeded"}\n', "job_id"),
])
def test_a_bad_amount_or_an_unsafe_id_is_refused_naming_the_line(
        tmp_path: Path, bad: bytes, message: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "ledger.jsonl").write_bytes(_line("ok") + bad)
    with pytest.raises(InputError, match=rf"ledger\.jsonl:2: {message}"):
        load_status(run)
