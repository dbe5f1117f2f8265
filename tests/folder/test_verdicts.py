"""Rejected images set aside (batchgen/folder/verdicts.py): moved whole, never over another, and
never the redo's own image (issue 21)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from batchgen.folder.verdicts import REJECTED_DIR, Redo, Redos


def image(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.with_suffix(".json").write_text("{}")
    return hashlib.sha256(data).hexdigest()


def test_the_rejected_image_and_its_sidecar_are_moved_once(tmp_path: Path) -> None:
    sha = image(tmp_path / "images/ab/j1.png", b"old picture")
    redos = Redos(tmp_path, {"j1": Redo("j1", sha, ("images/ab/j1.png",), "blurry")})
    assert redos.before_line("j1") == {"replaces": sha, "note": "blurry"}
    kept = sorted(p.name for p in (tmp_path / REJECTED_DIR).rglob("*") if p.is_file())
    assert kept == [f"j1.{sha[:16]}.json", f"j1.{sha[:16]}.png"]
    assert not (tmp_path / "images/ab/j1.png").exists()
    # the new image saved, then a second line of the job (a retry): nothing moves again
    image(tmp_path / "images/ab/j1.png", b"new picture")
    assert redos.before_line("j1")["replaces"] == sha
    assert (tmp_path / "images/ab/j1.png").read_bytes() == b"new picture"
    assert redos.before_line("other") == {}


def test_an_image_that_is_not_the_rejected_one_stays(tmp_path: Path) -> None:
    old = hashlib.sha256(b"old picture").hexdigest()
    image(tmp_path / "images/ab/j1.png", b"the redo's own, saved before a kill")
    Redos(tmp_path, {"j1": Redo("j1", old, ("images/ab/j1.png",), "")}).before_line("j1")
    assert (tmp_path / "images/ab/j1.png").read_bytes() == b"the redo's own, saved before a kill"
    assert not (tmp_path / REJECTED_DIR).exists()
