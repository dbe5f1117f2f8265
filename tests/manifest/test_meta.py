"""The user's metadata in a manifest: ``meta`` is not part of the job id."""

from __future__ import annotations

from pathlib import Path

from batchgen.manifest import Manifest


def test_meta_does_not_change_the_job_id(tmp_path: Path) -> None:
    plain = tmp_path / "a.jsonl"
    plain.write_text('{"prompt": "a fox", "id": "fox"}\n')
    labelled = tmp_path / "b.jsonl"
    labelled.write_text('{"prompt": "a fox", "id": "fox", "meta": {"label": "fox", "n": 3}}\n')
    (a,) = Manifest(plain).iter_jobs()
    (b,) = Manifest(labelled).iter_jobs()
    assert a.job_id == b.job_id
    assert dict(b.meta) == {"label": "fox", "n": 3} and b.name == "fox"
    assert b.source == f"{labelled}:1"
