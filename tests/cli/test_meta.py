"""The user's metadata and provenance on every output, the current-jobs file, the image layout.

Runs go through the CLI as a subprocess against the real fake server; images are real bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from batchgen.errors import InputError
from batchgen.fake import ThreadedFakeServer
from batchgen.folder.current import current_ids, iter_current
from batchgen.manifest import Manifest
from tests.helpers.cli import cli, ledger_lines, run_against, write_manifest
from tests.helpers.images import make_image

SETTINGS = ("model", "image_size", "aspect_ratio", "seed", "temperature")


MATRIX = """\
defaults:
  image_size: 1K
  meta:
    dataset: pets-v1
    license: cc0
jobs:
  - id: pets
    prompt: "a {animal} on a {colour} sofa"
    vars:
      animal: [cat, dog]
      colour: [red, blue]
    seed: 7
    temperature: 0.5
    aspect_ratio: "4:3"
    meta:
      label: animal
      weight: 1.5
      reviewed: true
      note: null
      license: cc-by
  - id: mug
    prompt: this mug on a table
    images: [ref.png]
    meta: {sku: 12345}
"""


def _shard(job_id: str) -> str:
    return hashlib.sha256(job_id.encode()).hexdigest()[:2]


def _sidecar(out: Path, rec: dict[str, object]) -> dict[str, object]:
    (rel,) = rec["outputs"]  # type: ignore[misc]
    data: dict[str, object] = json.loads((out / str(rel)).with_suffix(".json").read_bytes())
    return data


def _matrix_run(server: ThreadedFakeServer, tmp_path: Path) -> tuple[Path, Path]:
    make_image(tmp_path / "ref.png", size=(60, 30))  # 2:1, so the output follows it
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MATRIX)
    out = tmp_path / "run"
    r = run_against(server, manifest, out)
    assert r.code == 0, r.output
    return manifest, out


def test_matrix_with_meta_carries_provenance_everywhere(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    manifest, out = _matrix_run(server, tmp_path)
    lines = ledger_lines(out)
    assert len(lines) == 5 and all(rec["status"] == "succeeded" for rec in lines)
    ref_sha = hashlib.sha256((tmp_path / "ref.png").read_bytes()).hexdigest()
    pets = [rec for rec in lines if rec["name"] == "pets"]
    (mug,) = [rec for rec in lines if rec["name"] == "mug"]
    assert len(pets) == 4
    for rec in pets:
        assert rec["source"] == f"{manifest}:7"
        # The default's keys, overridden key by key by the job's own.
        assert rec["meta"] == {
            "dataset": "pets-v1",
            "license": "cc-by",
            "label": "animal",
            "weight": 1.5,
            "reviewed": True,
            "note": None,
        }
        assert (rec["model"], rec["image_size"], rec["aspect_ratio"]) == (
            "gemini-3-pro-image",
            "1K",
            "4:3",
        )
        assert (rec["seed"], rec["temperature"]) == (7, 0.5)
        assert rec["references"] == []
    assert mug["source"] == f"{manifest}:21"
    assert mug["meta"] == {"dataset": "pets-v1", "license": "cc0", "sku": 12345}
    assert mug["references"] == [{"path": "ref.png", "sha256": ref_sha}]
    # No ratio asked for: the output followed the reference, and the ledger says which it got.
    assert mug["aspect_ratio"] == "16:9"
    assert (mug["seed"], mug["temperature"]) == (None, None)
    for rec in lines:
        side = _sidecar(out, rec)
        for key in ("job_id", "name", "source", "meta", "references", *SETTINGS):
            assert side[key] == rec[key], key
        (rel,) = rec["outputs"]  # type: ignore[misc]
        with Image.open(out / str(rel)) as img:
            img.load()
            assert (img.width, img.height) == (rec["width"], rec["height"])
    # The current-jobs file: one line per job of the manifest, with the same provenance.
    entries = list(iter_current(out))
    assert [e["job_id"] for e in entries] == [
        j.job_id for j in Manifest(manifest).iter_jobs()
    ]
    assert current_ids(out) == {str(rec["job_id"]) for rec in lines}
    by_id = {str(rec["job_id"]): rec for rec in lines}
    for entry in entries:
        rec = by_id[entry["job_id"]]
        for key in ("name", "source", "meta", "references", "model", "image_size", "seed"):
            assert entry[key] == rec[key], key


def test_new_images_sidecars_and_thumbnails_go_in_hash_subfolders(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    _, out = _matrix_run(server, tmp_path)
    lines = ledger_lines(out)
    assert cli("gallery", out).code == 0  # every thumbnail made (the run's end makes none)
    for rec in lines:
        job_id = str(rec["job_id"])
        (rel,) = rec["outputs"]  # type: ignore[misc]
        assert rel == f"images/{_shard(job_id)}/{job_id}.png"
        assert (out / "images" / _shard(job_id) / f"{job_id}.json").is_file()
        assert (out / "thumbs" / _shard(job_id) / f"{job_id}.jpg").is_file()
    # Nothing but the subfolders at the top of images/ and thumbs/.
    for top in ("images", "thumbs"):
        assert all(p.is_dir() and len(p.name) == 2 for p in (out / top).iterdir())
    # The gallery shows each card's name, metadata and source, and finds cards by metadata.
    html = (out / "gallery.html").read_text()
    blob = html.split('<script type="application/json" id="data">', 1)[1].split("</script>")[0]
    cards = {c["id"]: c for c in json.loads(blob)}
    for rec in lines:
        card = cards[rec["job_id"]]
        assert (card["nm"], card["mt"], card["o"]) == (rec["name"], rec["meta"], rec["source"])
        assert card["th"] == f"thumbs/{_shard(str(rec['job_id']))}/{rec['job_id']}.jpg"


def test_editing_meta_reruns_nothing_and_the_current_file_has_the_new_value(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    manifest, out = _matrix_run(server, tmp_path)
    sent = server.stats.requests
    ids_before = current_ids(out)
    manifest.write_text(MATRIX.replace("label: animal", "label: pet").replace("12345", "999"))
    r = run_against(server, manifest, out)
    assert r.code == 0, r.output
    assert server.stats.requests == sent  # not one request more
    assert current_ids(out) == ids_before
    metas = {e["name"]: e["meta"] for e in iter_current(out)}
    assert metas["pets"]["label"] == "pet" and metas["mug"]["sku"] == 999
    # The ledger still says what the images were made with; it gained no lines.
    assert len(ledger_lines(out)) == 5


def test_csv_meta_columns(server: ThreadedFakeServer, tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(
        "id,prompt,meta.sku,Meta.Label,meta.empty\n"
        "a,a red mug,00123,mug, \n"
        'b,"a blue bowl, glazed",00456,bowl,x\n'
        'c,"a green vase,\non a shelf",00789,"vase\nsmall",\n'
    )
    out = tmp_path / "run"
    r = run_against(server, csv, out)
    assert r.code == 0, r.output
    by_name = {rec["name"]: rec for rec in ledger_lines(out)}
    # CSV values stay text: a SKU's leading zeros survive; an empty cell is no value.
    assert by_name["a"]["meta"] == {"sku": "00123", "Label": "mug"}
    assert by_name["b"]["meta"] == {"sku": "00456", "Label": "bowl", "empty": "x"}
    assert by_name["b"]["source"] == f"{csv}:3"
    # Multi-line cells are fine, in metadata too.
    assert by_name["c"]["meta"] == {"sku": "00789", "Label": "vase\nsmall"}
    assert by_name["c"]["prompt"] == "a green vase,\non a shelf"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("m.csv", "prompt,colour\nx,red\n", "m.csv:1: colour: unknown column"),
        ("m.csv", "prompt,meta\nx,{}\n", "m.csv:1: meta: CSV metadata goes in columns"),
        ("m.csv", "prompt,meta.\nx,1\n", "m.csv:1: meta.: "),
        ("m.csv", "prompt,meta.a,meta.a\nx,1,2\n", "m.csv:1: meta.a: column appears twice"),
        (
            "m.csv",
            'prompt,meta.sku,image_size\na,"x2\nnext row,x4,2K\n",1K\n',
            "m.csv:2: meta.sku: the cell spans lines 2-4 and contains what looks like a CSV row",
        ),
        ("m.yaml", "jobs:\n  - prompt: x\n    lable: cat\n", "m.yaml:3: lable: unknown field"),
        ("m.jsonl", '{"prompt": "x"}\n{"prompt": "y", "metta": {}}\n', "m.jsonl:2: metta: unknown"),
        (
            "m.yaml",
            "jobs:\n  - prompt: x\n    meta:\n      a: 1\n      b: {c: 1}\n",
            "m.yaml:5: meta.b: must be a string, number, true/false or null, not a mapping",
        ),
        (
            "m.yaml",
            "defaults:\n  meta: {tags: [a, b]}\njobs:\n  - prompt: x\n",
            "m.yaml:2: meta.tags: must be a string, number, true/false or null, not a list",
        ),
        ("m.jsonl", '{"prompt": "x", "meta": {"a": [1]}}\n', "m.jsonl:1: meta.a: must be"),
        (
            "m.yaml",
            "jobs:\n  - prompt: x\n    meta:\n      shot: 2024-01-31\n",
            "m.yaml:4: meta.shot: must be a string, number, true/false or null, not date; quote",
        ),
        ("m.jsonl", '{"prompt": "x", "meta": "cat"}\n', "m.jsonl:1: meta: must be a mapping"),
        ("m.jsonl", '{"prompt": "x", "meta": {"": 1}}\n', "m.jsonl:1: meta: has an empty name"),
    ],
)
def test_bad_fields_and_meta_are_errors_with_file_and_line(
    server: ThreadedFakeServer, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(InputError) as info:
        Manifest(manifest).validate()
    shown = str(info.value).replace(str(tmp_path) + os.sep, "")
    assert expected in shown, shown
    out = tmp_path / "run"
    r = run_against(server, manifest, out)
    assert r.code == 2 and expected in r.output.replace(str(tmp_path) + os.sep, ""), r.output
    assert server.stats.requests == 0 and not out.exists()


def _make_flat(out: Path) -> None:
    """Turn a run folder into what batchgen wrote before subfolders and provenance: every image
    and sidecar in ``images/``, ledger lines without the new fields, no ``jobs.jsonl``."""
    old_keys = (
        "job_id", "status", "prompt", "attempts", "outputs", "text", "usage", "cost_usd",
        "latency_s", "finished_at", "error", "model", "image_size", "aspect_ratio", "references",
        "seed", "width", "height", "mime_type", "sha256", "started_at",
    )  # fmt: skip
    lines = []
    for rec in ledger_lines(out):
        old = {k: rec[k] for k in old_keys}
        old["references"] = [r["path"] for r in rec["references"]]  # type: ignore[attr-defined]
        old["outputs"] = [f"images/{Path(str(rel)).name}" for rel in rec["outputs"]]  # type: ignore[attr-defined]
        for rel, flat in zip(rec["outputs"], old["outputs"], strict=True):  # type: ignore[call-overload]
            src = out / str(rel)
            os.replace(src, out / flat)
            src.with_suffix(".json").unlink()
            (out / flat).with_suffix(".json").write_text(json.dumps(old) + "\n")
        lines.append(json.dumps(old))
    (out / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    for sub in (out / "images").iterdir():
        if sub.is_dir():
            sub.rmdir()
    shutil.rmtree(out / "thumbs")
    (out / "jobs.jsonl").unlink()


def test_a_flat_folder_from_before_resumes_adopts_and_reports(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    prompts = [f"flat picture {i}" for i in range(4)]
    manifest = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    assert run_against(server, manifest, out).code == 0
    _make_flat(out)
    assert all(p.is_file() for p in (out / "images").iterdir())
    # An orphan of the old layout: image and sidecar saved, the ledger line never written.
    ledger = (out / "ledger.jsonl").read_text().splitlines()
    orphan = json.loads(ledger[-1])
    (out / "ledger.jsonl").write_text("\n".join(ledger[:-1]) + "\n")
    sent = server.stats.requests
    write_manifest(manifest, [*prompts, "a new one"])
    r = run_against(server, manifest, out)
    assert r.code == 0, r.output
    assert server.stats.requests == sent + 1  # only the new job; the orphan was adopted
    lines = ledger_lines(out)
    adopted = [rec for rec in lines if rec.get("adopted")]
    assert [rec["job_id"] for rec in adopted] == [orphan["job_id"]]
    assert adopted[0]["outputs"] == orphan["outputs"]
    latest = {str(rec["job_id"]): rec for rec in lines}
    assert len(latest) == 5
    for rec in latest.values():
        (rel,) = rec["outputs"]  # type: ignore[misc]
        with Image.open(out / str(rel)) as img:
            img.load()
    new = latest[next(j for j in latest if j.startswith("a-new-one"))]
    assert str(new["outputs"][0]).count("/") == 2  # type: ignore[index]
    old_refs = [rec["references"] for rec in lines if not rec.get("name")]
    assert old_refs and all(refs == [] for refs in old_refs)
    report = cli("report", out)
    assert report.code == 0, report.output
    assert "succeeded" in report.stdout and "5" in report.stdout
    status = json.loads(cli("status", out, "--json").stdout)
    assert status["succeeded"] == 5 and status["pending"] == 0
    gallery = cli("gallery", out)
    assert gallery.code == 0, gallery.output
    assert len(list((out / "thumbs").rglob("*.jpg"))) == 5

    # Merged with a folder of the new layout: both kinds of path stay valid side by side.
    other = tmp_path / "other"
    assert run_against(server, write_manifest(tmp_path / "m2.yaml", ["other one"]), other).code == 0
    merged = tmp_path / "merged"
    r = cli("merge", out, other, "--out", merged)
    assert r.code == 0, r.output
    merged_latest = {str(rec["job_id"]): rec for rec in ledger_lines(merged)}
    assert len(merged_latest) == 6
    depths = set()
    for rec in merged_latest.values():
        (rel,) = rec["outputs"]  # type: ignore[misc]
        depths.add(str(rel).count("/"))
        with Image.open(merged / str(rel)) as img:
            img.load()
        assert (merged / str(rel)).with_suffix(".json").is_file()
    assert depths == {1, 2}
    both = (current_ids(out) or set()) | (current_ids(other) or set())
    assert current_ids(merged) == both and len(both) == 6


def test_the_current_file_is_replaced_whole_and_only_by_good_input(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path / "m.yaml", [f"shard me {i}" for i in range(8)])
    out = tmp_path / "run"
    # A shard's folder lists the jobs of its shard only.
    assert run_against(server, manifest, out, "--shard", "1/2").code == 0
    shard_ids = current_ids(out)
    assert shard_ids == {str(rec["job_id"]) for rec in ledger_lines(out)}
    assert shard_ids and len(shard_ids) < 8
    before = (out / "jobs.jsonl").read_bytes()
    # Bad input on a folder already in use: exit 2, the file as it was, no leftovers.
    manifest.write_text("jobs:\n  - prompt: x\n    meta: {a: [1]}\n")
    r = run_against(server, manifest, out, "--shard", "1/2")
    assert r.code == 2, r.output
    assert (out / "jobs.jsonl").read_bytes() == before
    assert not list(out.glob("*.tmp"))
    # Good input on the folder (written straight into it this time, as it is locked first).
    write_manifest(manifest, [f"shard me {i}" for i in range(8)], meta={"batch": 2})
    assert run_against(server, manifest, out, "--shard", "1/2").code == 0
    assert current_ids(out) == shard_ids
    assert all(e["meta"] == {"batch": 2} for e in iter_current(out))
    assert not list(out.glob("*.tmp"))


def test_a_flat_folder_from_before_exports(server: ThreadedFakeServer, tmp_path: Path) -> None:
    pytest.importorskip("batchgen.export")  # `batchgen export` comes with issue 9's other half
    manifest = write_manifest(tmp_path / "m.yaml", [f"flat export {i}" for i in range(3)])
    out = tmp_path / "run"
    assert run_against(server, manifest, out).code == 0
    _make_flat(out)  # no jobs.jsonl, no provenance in the ledger, every file in images/
    dataset = tmp_path / "ds"
    r = cli("export", out, "--format", "imagefolder", "--out", dataset, "--no-progress")
    assert r.code == 0, r.output
    rows = [json.loads(x) for x in next(dataset.rglob("metadata.jsonl")).read_text().splitlines()]
    assert sorted(row["prompt"] for row in rows) == [f"flat export {i}" for i in range(3)]
    for row in rows:
        image = next(dataset.rglob("metadata.jsonl")).parent / row["file_name"]
        with Image.open(image) as img:
            img.load()
