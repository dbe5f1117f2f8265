"""Issue 20, exports that training code wants: ``--name`` templates, ``--stratify``, resizing and
re-encoding (``--max-side``, ``--image-format``, ``--quality``), the replacing of an export of
another format said, and ``--include-failed``'s counts.

A matrix run is made by the CLI against the fake server; the folders that need big images or
exact proportions are written directly (real PNGs Pillow decodes, real ledger lines).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batchgen.export.encode import Reencode, transformed
from batchgen.export.source import Row
from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import Result, run_against

MATRIX = """\
jobs:
  - id: pets
    prompt: "a {animal} on a {place}"
    vars: {animal: [cat, dog], place: [sofa, rug]}
    meta: {label: "{animal}", sku: "SKU-{place}"}
"""


def export(run: Path, fmt: str, out: Path | str, *extra: str) -> Result:
    """The CLI in this process (a subprocess would cost seconds of imports; the code is the same)."""
    from click.testing import CliRunner

    from batchgen.cli.app import main

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        res = CliRunner().invoke(main, ["export", str(run), "--format", fmt, "--out", str(out),
                                        "--no-progress", *extra], catch_exceptions=False)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return Result(res.exit_code, res.stdout, res.stderr)


def read_parquet(out: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return [r for f in sorted(out.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def metadata(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(out.rglob("metadata.jsonl"))
            for line in f.read_text().splitlines()]


def tar_members(out: Path) -> list[str]:
    names = []
    for shard in sorted(out.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    return names


@pytest.fixture
def matrix_run(server: ThreadedFakeServer, tmp_path: Path) -> Path:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MATRIX)
    out = tmp_path / "run"
    r = run_against(server, manifest, out, "--no-gallery")
    assert r.code == 0, r.output
    return out


def png(size: tuple[int, int], colour: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (colour % 256, 80, 160)).save(buf, "PNG")
    return buf.getvalue()


def synth_run(path: Path, items: list[dict[str, Any]]) -> list[str]:
    """A run folder written directly: one succeeded job per item (``size``, ``meta``), or a
    failure (``failed``). Returns the job ids."""
    path.mkdir(parents=True)
    ids = []
    with (path / "ledger.jsonl").open("w") as ledger:
        for i, item in enumerate(items):
            job_id = f"job{i:04d}-{hashlib.sha256(str(i).encode()).hexdigest()[:10]}"
            ok = not item.get("failed")
            rel = f"images/{job_id[-2:]}/{job_id}.png"
            rec: dict[str, Any] = {
                "job_id": job_id, "status": "succeeded" if ok else "failed",
                "prompt": f"prompt {i}", "attempts": 1, "outputs": [rel] if ok else [],
                "meta": item.get("meta", {}), "model": "gemini-3-pro-image",
                "error": None if ok else {"kind": "blocked", "message": "IMAGE_SAFETY"},
            }
            if ok:
                data = png(item.get("size", (8, 6)), i)
                (path / rel).parent.mkdir(parents=True, exist_ok=True)
                (path / rel).write_bytes(data)
                w, h = item.get("size", (8, 6))
                rec.update(width=w, height=h, mime_type="image/png",
                           sha256=hashlib.sha256(data).hexdigest())
            ledger.write(json.dumps(rec) + "\n")
            ids.append(job_id)
    return ids


# --- --name ------------------------------------------------------------------------------------

def test_name_template_names_the_files_of_every_format(matrix_run: Path, tmp_path: Path) -> None:
    res = export(matrix_run, "parquet", tmp_path / "pq", "--name", "{meta.sku}-{animal}")
    assert res.code == 0, res.output
    rows = read_parquet(tmp_path / "pq")
    assert sorted(r["image"]["path"] for r in rows) == [
        "SKU-rug-cat.png", "SKU-rug-dog.png", "SKU-sofa-cat.png", "SKU-sofa-dog.png"]
    for r in rows:  # each name is its own row's
        assert r["image"]["path"] == f"{r['sku']}-{r['animal']}.png"

    res = export(matrix_run, "imagefolder", tmp_path / "if", "--name", "{label}")
    assert res.code == 0, res.output
    assert "2 names taken twice, given a suffix" in res.stderr
    meta = metadata(tmp_path / "if")
    stems = sorted(Path(m["file_name"]).stem for m in meta)
    assert stems == ["cat", "cat-2", "dog", "dog-2"]
    for m in meta:
        assert (tmp_path / "if" / m["file_name"]).is_file()
        assert Path(m["file_name"]).stem.split("-")[0] == m["label"]
    # Rows go in job id order, so the suffixes land on the same rows every time.
    assert export(matrix_run, "imagefolder", tmp_path / "if", "--name", "{label}").code == 0
    assert metadata(tmp_path / "if") == meta

    res = export(matrix_run, "webdataset", tmp_path / "wds", "--name", "{animal}_{place}")
    assert res.code == 0, res.output
    keys = {n.rsplit(".", 1)[0] for n in tar_members(tmp_path / "wds")}
    assert keys == {"cat_sofa", "cat_rug", "dog_sofa", "dog_rug"}


def test_names_are_sanitised_and_unique_whatever_the_case(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", [{"meta": {"title": "Red Mug / 2"}}, {"meta": {"title": "red mug / 2"}},
                                 {"meta": {"title": "../../etc"}}, {"meta": {}}])
    res = export(tmp_path / "run", "parquet", tmp_path / "pq", "--name", "{title}")
    assert res.code == 0, res.output
    paths = [r["image"]["path"] for r in read_parquet(tmp_path / "pq")]
    assert paths[:3] == ["Red-Mug-2.png", "red-mug-2-2.png", "etc.png"]
    assert paths[3].startswith("job0003-")  # every field empty: the job id
    assert "1 row with every --name field empty" in res.stderr
    res = export(tmp_path / "run", "imagefolder", tmp_path / "if", "--name", "{title}")
    assert res.code == 0, res.output
    files = sorted(p.name for p in (tmp_path / "if").rglob("*.png"))
    assert len(files) == 4 and len({f.casefold() for f in files}) == 4
    assert all(p.resolve().is_relative_to((tmp_path / "if").resolve())
               for p in (tmp_path / "if").rglob("*"))


@pytest.mark.parametrize(("template", "says"), [
    ("{meta.nope}-{animal}", "--name '{meta.nope}-{animal}': no column {meta.nope}"),
    ("{animl}", "no column {animl} in this dataset (columns: job_id, name, prompt"),
    ("{seed:04d}", "without a format"),
    ("{animal", "expected '}'"),
    ("plain", "no {field}"),
])
def test_a_bad_name_template_is_exit_2_before_anything_is_written(
    matrix_run: Path, tmp_path: Path, template: str, says: str
) -> None:
    res = export(matrix_run, "webdataset", tmp_path / "wds", "--name", template)
    assert res.code == 2, res.output
    assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "wds").exists()
    assert list(tmp_path.glob("wds*")) == []


# --- --stratify --------------------------------------------------------------------------------

def test_stratify_splits_each_value_in_the_asked_proportions(tmp_path: Path) -> None:
    labels = ["common"] * 90 + ["rare"] * 10 + ["single"]
    synth_run(tmp_path / "run", [{"meta": {"label": x}} for x in labels])
    args = ("--split", "train=0.9,test=0.1", "--stratify", "label")
    res = export(tmp_path / "run", "parquet", tmp_path / "pq", *args)
    assert res.code == 0, res.output
    test = read_parquet(tmp_path / "pq" / "test")
    train = read_parquet(tmp_path / "pq" / "train")
    count = {(split, label): 0 for split in ("train", "test") for label in set(labels)}
    for split, rows in (("train", train), ("test", test)):
        for r in rows:
            count[split, r["label"]] += 1
    assert count == {("train", "common"): 81, ("test", "common"): 9, ("train", "rare"): 9,
                     ("test", "rare"): 1, ("train", "single"): 1, ("test", "single"): 0}
    # The same folder, the same splits, whatever the format.
    assert export(tmp_path / "run", "webdataset", tmp_path / "wds", *args).code == 0
    in_test = {n.split(".")[0] for n in tar_members(tmp_path / "wds" / "test")}
    assert in_test == {r["job_id"].replace(".", ",") for r in test}
    # meta.KEY names the same field.
    assert export(tmp_path / "run", "parquet", tmp_path / "pq2", "--split", "train=0.9,test=0.1",
                  "--stratify", "meta.label").code == 0
    assert read_parquet(tmp_path / "pq2" / "test") == test


def test_stratify_needs_a_split_and_a_known_key(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", [{"meta": {"label": "a"}}, {"meta": {"label": "b"}}])
    res = export(tmp_path / "run", "parquet", tmp_path / "pq", "--stratify", "label")
    assert res.code == 2 and "--stratify label: needs --split" in res.stderr
    res = export(tmp_path / "run", "parquet", tmp_path / "pq", "--split", "a=0.5,b=0.5",
                 "--stratify", "lable")
    assert res.code == 2 and "no column {lable}" in res.stderr
    assert not (tmp_path / "pq").exists()


# --- resize and re-encode ----------------------------------------------------------------------

def test_resize_and_reencode_in_every_format(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", [{"size": (300, 200)}, {"size": (60, 40)}, {"size": (90, 400)}])
    opts = ("--max-side", "100", "--image-format", "jpeg", "--quality", "80")
    res = export(tmp_path / "run", "parquet", tmp_path / "pq", *opts)
    assert res.code == 0, res.output
    rows = read_parquet(tmp_path / "pq")
    sizes = []
    for r in rows:
        data = r["image"]["bytes"]
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG"
            im.load()
            sizes.append(im.size)
            assert (r["width"], r["height"]) == im.size
        assert r["mime_type"] == "image/jpeg" and r["image"]["path"].endswith(".jpg")
        assert r["sha256"] == hashlib.sha256(data).hexdigest()
    assert sizes == [(100, 67), (60, 40), (22, 100)]  # longer side down to 100; none upscaled

    res = export(tmp_path / "run", "imagefolder", tmp_path / "if", "--image-format", "webp")
    assert res.code == 0, res.output
    assert "3 re-encoded" in res.stderr
    for m in metadata(tmp_path / "if"):
        with Image.open(tmp_path / "if" / m["file_name"]) as im:
            assert im.format == "WEBP" and im.size == (m["width"], m["height"])

    res = export(tmp_path / "run", "webdataset", tmp_path / "wds", "--max-side", "64")
    assert res.code == 0, res.output
    pngs = [n for n in tar_members(tmp_path / "wds") if n.endswith(".png")]
    assert len(pngs) == 3


def test_an_image_within_max_side_is_linked_as_it_is(tmp_path: Path) -> None:
    ids = synth_run(tmp_path / "run", [{"size": (300, 200)}, {"size": (60, 40)}])
    res = export(tmp_path / "run", "imagefolder", tmp_path / "if", "--max-side", "100")
    assert res.code == 0, res.output
    assert "1 linked" in res.stderr and "1 re-encoded" in res.stderr
    small = tmp_path / "run" / "images" / ids[1][-2:] / f"{ids[1]}.png"
    exported = {Path(m["file_name"]).stem: tmp_path / "if" / m["file_name"]
                for m in metadata(tmp_path / "if")}
    assert exported[ids[1]].stat().st_ino == small.stat().st_ino  # a hard link, not a copy
    assert exported[ids[0]].stat().st_ino != small.stat().st_ino


def test_the_reencoding_window_is_bounded_and_keeps_the_order(tmp_path: Path) -> None:
    image = tmp_path / "big.png"
    image.write_bytes(png((256, 256), 1))
    pulled = 0
    lock = threading.Lock()

    def rows() -> Iterator[Row]:
        nonlocal pulled
        for i in range(200):
            with lock:
                pulled += 1
            yield Row(f"job{i:03d}", {"width": 256, "height": 256}, image, "png")

    seen = []
    ahead = 0
    for row in transformed(rows(), Reencode(max_side=32), n_workers=3):
        seen.append(row.job_id)
        ahead = max(ahead, pulled - len(seen))
        assert row.data is not None and row.columns["width"] == 32
    assert seen == [f"job{i:03d}" for i in range(200)]
    assert ahead <= 6  # 2 x workers images at most, whatever the folder holds


def test_a_corrupt_image_stops_the_reencoding_export_and_leaves_nothing(tmp_path: Path) -> None:
    ids = synth_run(tmp_path / "run", [{"size": (300, 200)}, {"size": (60, 40)}])
    (tmp_path / "run" / "images" / ids[0][-2:] / f"{ids[0]}.png").write_bytes(b"not a png")
    res = export(tmp_path / "run", "parquet", tmp_path / "pq", "--max-side", "100")
    assert res.code == 4, res.output
    assert "cannot read the image to re-encode it" in res.stderr
    assert list(tmp_path.glob("pq*")) == []


# --- replacing, --include-failed ---------------------------------------------------------------

def test_replacing_an_export_of_another_format_says_so(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", [{}, {}])
    out = tmp_path / "ds"
    assert export(tmp_path / "run", "webdataset", out).code == 0
    res = export(tmp_path / "run", "parquet", out)
    assert res.code == 0, res.output
    said = [line for line in res.stderr.splitlines() if line.startswith("replacing")]
    assert said == [f"replacing the webdataset export at {out} with a parquet one"]
    assert tar_members(out) == [] and len(read_parquet(out)) == 2
    res = export(tmp_path / "run", "parquet", out)
    assert res.code == 0 and "replacing the" not in res.stderr


def test_include_failed_counts_images_and_failures_apart(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", [{}, {"failed": True}, {}, {"failed": True}, {"failed": True}])
    res = export(tmp_path / "run", "webdataset", tmp_path / "wds", "--include-failed")
    assert res.code == 0, res.output
    assert res.stderr.startswith(
        f"exported 2 images and 3 failed jobs (no image) to {tmp_path / 'wds'} as webdataset")
    res = export(tmp_path / "run", "webdataset", tmp_path / "wds2")
    assert res.stderr.startswith(f"exported 2 images to {tmp_path / 'wds2'} as webdataset")
    assert "3 failed jobs left out" in res.stderr


def test_object_storage_gets_names_reencoded_images_and_the_replacing_line(tmp_path: Path
                                                                            ) -> None:
    import fsspec

    synth_run(tmp_path / "run", [{"size": (300, 200), "meta": {"label": "a"}},
                                 {"size": (60, 40), "meta": {"label": "a"}}])
    url = "memory://bucket/i20b-ds"
    res = export(tmp_path / "run", "webdataset", url)
    assert res.code == 0, res.output
    res = export(tmp_path / "run", "imagefolder", url, "--name", "{label}",
                 "--max-side", "100")
    assert res.code == 0, res.output
    fs = fsspec.filesystem("memory")
    assert any(line.startswith("replacing the webdataset export at memory://")
               for line in res.stderr.splitlines())
    rows = [json.loads(x) for x in fs.cat_file("/bucket/i20b-ds/metadata.jsonl").splitlines()]
    assert sorted(Path(r["file_name"]).name for r in rows) == ["a-2.png", "a.png"]
    for r in rows:
        with Image.open(io.BytesIO(fs.cat_file(f"/bucket/i20b-ds/{r['file_name']}"))) as im:
            assert im.size == (r["width"], r["height"]) and max(im.size) <= 100
    assert not [p for p in fs.find("/bucket/i20b-ds") if p.endswith(".tar")]


def test_stratify_by_a_column_that_reencoding_changes(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", [{"size": (300, 200)}] * 10 + [{"size": (60, 40)}] * 10)
    args = ("--split", "train=0.5,test=0.5", "--stratify", "width")
    assert export(tmp_path / "run", "parquet", tmp_path / "a", *args).code == 0
    res = export(tmp_path / "run", "parquet", tmp_path / "b", *args, "--max-side", "100")
    assert res.code == 0, res.output
    for out in ("a", "b"):
        test = read_parquet(tmp_path / out / "test")
        assert len(test) == 10
    # The same rows in each split, by the widths the run folder has (300 and 60).
    ids = {out: sorted(r["job_id"] for r in read_parquet(tmp_path / out / "test"))
           for out in ("a", "b")}
    assert ids["a"] == ids["b"]
    widths = sorted(r["width"] for r in read_parquet(tmp_path / "b" / "test"))
    assert widths == [60] * 5 + [100] * 5
