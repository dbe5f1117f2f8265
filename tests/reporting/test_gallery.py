"""The gallery page alone (batchgen/reporting/gallery.py): its embedded JSON and the images it shows."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from batchgen.folder.layout import subdir
from batchgen.reporting.gallery import build_gallery, script_json
from tests.helpers.rows import _ledger_line


def test_script_json_cannot_close_the_script() -> None:
    text = script_json([{"p": "</script><!-- & \u2028"}])
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == [{"p": "</script><!-- & \u2028"}]


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
