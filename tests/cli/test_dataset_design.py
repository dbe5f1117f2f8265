"""Issue 20: a dataset keeps its design (vars and filled-in meta as columns), spreadsheets as they
are (``--column``, ``--set``, typed meta columns), the whole request (system instruction, safety
settings, Search grounding) and the model table.

Runs go through the CLI against the real fake server; exports are loaded with the libraries users
load them with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from batchgen.catalog import ModelTable
from batchgen.errors import InputError
from batchgen.fake import ThreadedFakeServer
from batchgen.fake.validate import ApiError, parse_request_obj
from batchgen.manifest import Manifest
from tests.helpers.cli import cli, ledger_lines, run_against

DESIGN = """\
jobs:
  - id: pets
    prompt: "a {animal} asleep on a {place}"
    meta:
      label: "{animal}"
      caption: "{animal} on {place}, {{studio}}"
      setting: studio
    vars:
      animal: [cat, dog]
      place: [sofa, rug]
  - prompt: a plain mug
    image_size: 2K
    meta: {sku: "00123"}
"""
# What the same manifest with `label: animal` (no template, no caption) got as ids before
# issue 20 (computed with the code of commit 3bfede3): meta is not hashed, and no new request
# field is set, so the ids must not move.
OLD = """\
jobs:
  - id: pets
    prompt: "a {animal} on a sofa"
    vars:
      animal: [cat, dog]
    meta:
      label: animal
  - prompt: a plain mug
    image_size: 2K
    meta: {sku: "00123"}
"""
OLD_IDS = ["pets-cat-13840af794", "pets-dog-4812f21d11", "a-plain-mug-0bcb793ae5"]


def _problems(path: Path, **kw: Any) -> list[str]:
    with pytest.raises(InputError) as err:
        Manifest(path, **kw).validate()
    return [str(p) for p in err.value.problems]


def test_ids_of_an_old_manifest_are_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(OLD)
    assert [j.job_id for j in Manifest(path).iter_jobs()] == OLD_IDS
    # A meta template changes no id either (meta is never sent).
    path.write_text(OLD.replace("label: animal", 'label: "{animal}"'))
    jobs = list(Manifest(path).iter_jobs())
    assert [j.job_id for j in jobs] == OLD_IDS
    assert [dict(j.meta)["label"] for j in jobs[:2]] == ["cat", "dog"]
    # A new request field is part of the id only where it is set.
    path.write_text(OLD.replace("image_size: 2K", "image_size: 2K\n    google_search: true"))
    ids = [j.job_id for j in Manifest(path).iter_jobs()]
    assert ids[:2] == OLD_IDS[:2] and ids[2] != OLD_IDS[2]


def test_meta_templates_and_var_names_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "jobs:\n"
        "  - prompt: 'a {animal}'\n"
        "    vars: {animal: [cat]}\n"
        "    meta:\n"
        "      label: '{animl}'\n"
        "      animal: x\n"
        "  - prompt: plain\n"
        "    meta: {label: '{product}', raw: '{\"a\": 1}'}\n"
    )
    problems = _problems(path)
    assert problems == [
        f"{path}:5: meta.label: placeholder {{animl}} has no var of that name (vars: animal)",
        f"{path}:6: meta.animal: is also the name of a var; a var is a column of its own: "
        "rename one ('animal')",
        f"{path}:8: meta.label: placeholder {{product}} has no var of that name "
        "(this row has no vars)",
    ]


def _design_run(server: ThreadedFakeServer, tmp_path: Path) -> Path:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(DESIGN)
    out = tmp_path / "run"
    r = run_against(server, manifest, out)
    assert r.code == 0, r.output
    return out


def _expected() -> dict[str, dict[str, Any]]:
    rows = {}
    for animal in ("cat", "dog"):
        for place in ("sofa", "rug"):
            rows[f"a {animal} asleep on a {place}"] = {
                "animal": animal, "place": place, "label": animal,
                "caption": f"{animal} on {place}, {{studio}}", "setting": "studio",
            }
    return rows


def test_vars_and_filled_meta_are_columns_of_every_export(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    out = _design_run(server, tmp_path)
    lines = ledger_lines(out)
    by_prompt = {str(rec["prompt"]): rec for rec in lines}
    assert by_prompt["a dog asleep on a rug"]["vars"] == {"animal": "dog", "place": "rug"}
    assert by_prompt["a dog asleep on a rug"]["meta"]["label"] == "dog"  # type: ignore[index]
    assert by_prompt["a plain mug"]["vars"] == {}
    current = [json.loads(x) for x in (out / "jobs.jsonl").read_text().splitlines()]
    assert {c["prompt"]: c["vars"] for c in current}["a cat asleep on a sofa"] == {
        "animal": "cat", "place": "sofa"}
    want = _expected()

    def check(rows: list[dict[str, Any]]) -> None:
        assert len(rows) == 5
        for row in rows:
            if row["prompt"] == "a plain mug":
                assert row["sku"] == "00123" and row["animal"] is None
                continue
            assert {k: row[k] for k in want[row["prompt"]]} == want[row["prompt"]]

    import pyarrow.parquet as pq
    import webdataset as wds

    assert cli("export", out, "--format", "parquet", "--out", tmp_path / "pq").code == 0
    table = pq.read_table(sorted((tmp_path / "pq").rglob("*.parquet"))).to_pylist()
    check(table)
    assert cli("export", out, "--format", "webdataset", "--out", tmp_path / "wds").code == 0
    shards = [str(s) for s in sorted((tmp_path / "wds").glob("*.tar"))]
    check([s["json"] for s in wds.WebDataset(shards, shardshuffle=False).decode()])
    assert cli("export", out, "--format", "imagefolder", "--out", tmp_path / "hf").code == 0
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                      HF_HOME=str(tmp_path / "hfhome"))
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "hf"),
                               cache_dir=str(tmp_path / "cache"))
    check([{k: v for k, v in row.items() if k != "image"} for row in ds["train"]])


def test_a_folder_from_before_gets_its_var_columns_without_paying(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    out = _design_run(server, tmp_path)
    # As a folder made before issue 20: no vars in the ledger, sidecars or jobs.jsonl.
    for name in ("ledger.jsonl", "jobs.jsonl"):
        path = out / name
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        for rec in recs:
            rec.pop("vars", None)
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    billed = server.stats.billed_images
    r = run_against(server, tmp_path / "m.yaml", out)
    assert r.code == 0, r.output
    assert server.stats.billed_images == billed  # nothing sent again
    assert cli("export", out, "--format", "parquet", "--out", tmp_path / "pq").code == 0
    import pyarrow.parquet as pq

    rows = pq.read_table(sorted((tmp_path / "pq").rglob("*.parquet"))).to_pylist()
    assert {r["prompt"]: r["place"] for r in rows}["a dog asleep on a sofa"] == "sofa"


SHEET = """\
Description,Photo ID,SKU,Weight,Guide
a red mug,A1,00123,1.5,"Studio product photo, white background."
a blue lamp,A2,00456,2,
"""


def test_a_spreadsheet_runs_with_its_own_headers_and_the_whole_request(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    sheet = tmp_path / "products.csv"
    sheet.write_text(SHEET)
    out = tmp_path / "run"
    safety = "harassment=BLOCK_ONLY_HIGH;HARM_CATEGORY_DANGEROUS_CONTENT=BLOCK_NONE"
    args = ("--column", "prompt=Description", "--column", "meta.sku=SKU",
            "--column", "meta.weight:float=Weight", "--column", "system_instruction=Guide",
            "--column", "id=Photo ID",
            "--set", "image_size=2K", "--set", "aspect_ratio=4:5",
            "--set", f"safety_settings={safety}", "--set", "google_search=true",
            "--set", "system_instruction=Plain catalogue style.")
    server.stats.reset()
    r = run_against(server, sheet, out, *args)
    assert r.code == 0, r.output
    seen = {q["prompt"]: q for q in server.stats.requests_seen()}
    pairs = [("HARM_CATEGORY_HARASSMENT", "BLOCK_ONLY_HIGH"),
             ("HARM_CATEGORY_DANGEROUS_CONTENT", "BLOCK_NONE")]
    for prompt, instruction in (("a red mug", "Studio product photo, white background."),
                                ("a blue lamp", "Plain catalogue style.")):  # the cell wins
        q = seen[prompt]
        assert q["system_instruction"] == instruction and q["google_search"] is True
        assert q["safety_settings"] == pairs
        assert (q["image_size"], q["aspect_ratio"]) == ("2K", "4:5")
    recs = {str(rec["prompt"]): rec for rec in ledger_lines(out)}
    mug = recs["a red mug"]
    assert mug["name"] == "A1" and mug["meta"] == {"sku": "00123", "weight": 1.5}
    assert mug["request"]["google_search"] is True  # type: ignore[index]
    (rel,) = mug["outputs"]  # type: ignore[misc]
    sidecar = json.loads((out / str(rel)).with_suffix(".json").read_bytes())
    assert sidecar["grounding"]["webSearchQueries"] == ["a red mug"]
    assert recs["a blue lamp"]["meta"] == {"sku": "00456", "weight": 2.0}

    # A header the mapping names but the file lacks, a misspelt field, a bad default, a bad
    # typed cell: all reported at once, nothing sent.
    sheet.write_text(SHEET.replace("2,\n", "heavy,\n"))
    before = server.stats.requests
    bad = run_against(server, sheet, out, "--column", "prompt=Description",
                      "--column", "meta.weight:float=Weight", "--column", "promt=Guide",
                      "--column", "images=Picture", "--set", "safety_settings=harassment=MAYBE")
    assert bad.code == 2 and server.stats.requests == before
    err = bad.stderr
    assert "--column promt=Guide: 'promt' is not a field (did you mean prompt?" in err
    assert "--set safety_settings: threshold 'MAYBE' is not one of BLOCK_LOW_AND_ABOVE" in err
    assert f"{sheet}:1: --column images=Picture: no column 'Picture' in the header" in err
    assert (f"{sheet}:3: meta.weight: must be a number (the column says :float), not 'heavy'"
            in err)
    assert f"{sheet}:1: Photo ID: unknown column" in err  # unmapped: still an error


def test_the_fake_checks_the_new_fields_as_the_service_does() -> None:
    def request(**top: Any) -> dict[str, Any]:
        return {"contents": [{"parts": [{"text": "a cat"}]}], **top}

    ok = parse_request_obj(request(
        systemInstruction={"parts": [{"text": "be brief"}]},
        safetySettings=[{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}],
        tools=[{"google_search": {}}]), "gemini-3-pro-image")
    assert (ok.system_instruction, ok.google_search) == ("be brief", True)
    assert ok.safety_settings == (("HARM_CATEGORY_HATE_SPEECH", "OFF"),)
    for top, model, words in (
        ({"safetySettings": [{"category": "HARM_CATEGORY_IMAGE_HATE", "threshold": "OFF"}]},
         "gemini-3-pro-image", "safety_settings[0].category"),
        ({"safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "LOW"}]},
         "gemini-3-pro-image", "safety_settings[0].threshold"),
        ({"systemInstruction": {"parts": [{"text": 1}]}}, "gemini-3-pro-image", "TYPE_STRING"),
        ({"tools": [{"googleSearch": {}}]}, "gemini-2.5-flash-image", "not supported"),
        ({"generationConfig": {"imageConfig": {"aspectRatio": "8:1"}}}, "gemini-3-pro-image",
         "Unsupported aspect ratio: 8:1"),
    ):
        with pytest.raises(ApiError) as err:
            parse_request_obj(request(**top), model)
        assert err.value.code == 400 and words in err.value.message
    wide = parse_request_obj(request(generationConfig={"imageConfig": {
        "aspectRatio": "8:1", "imageSize": "512"}}), "gemini-3.1-flash-image")
    assert (wide.ratio, wide.size) == ("8:1", "512")


def test_the_model_table_drives_validation_pricing_and_the_did_you_mean(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("jobs:\n  - prompt: a tall banner\n    aspect_ratio: '1:8'\n"
                    "    image_size: '512'\n")
    problems = _problems(path)
    assert problems == [
        f"{path}:3: aspect_ratio: 1:8 is not offered by gemini-3-pro-image (its ratios: "
        "1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9)",
        f"{path}:4: image_size: 512 is not offered by gemini-3-pro-image (its sizes: 1K, 2K, 4K)",
    ]
    r = cli("validate", path, "--model", "gemini-3-pro-imag")
    assert r.code == 2
    assert ("batchgen: --model: unknown model 'gemini-3-pro-imag'; did you mean "
            "gemini-3-pro-image?") in r.stderr and "--prices FILE" in r.stderr
    assert "Traceback" not in r.stderr and "data/models.json" not in r.stderr
    # The Flash model offers both; it runs, and is priced from the table (747 tokens at $60/1M).
    out = tmp_path / "run"
    r = run_against(server, path, out, "--model", "gemini-3.1-flash-image")
    assert r.code == 0, r.output
    (rec,) = ledger_lines(out)
    assert rec["aspect_ratio"] == "1:8" and rec["height"] == 8 * rec["width"]  # type: ignore[operator]
    details = rec["usage"]["candidatesTokensDetails"]  # type: ignore[index]
    assert details == [{"modality": "IMAGE", "tokenCount": 747}]
    assert 747 * 60 / 1e6 < rec["cost_usd"] < 0.134  # type: ignore[operator]
    # A model described in --prices is known from then on, with the sizes its prices name.
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"my-image-model": {
        "output_image_per_1m": 10, "output_text_per_1m": 1, "input_per_1m": 1,
        "input_image_tokens": 100, "image_tokens": {"1K": 1000}}}))
    path.write_text("jobs:\n  - prompt: a cat\n    model: my-image-model\n")
    assert cli("validate", path, "--prices", prices).code == 0
    table = ModelTable.load(prices).models
    assert table["my-image-model"].image_sizes == ("1K",)
    assert table["gemini-3.1-flash-image"].aspect_ratios[-4:] == ("1:4", "4:1", "1:8", "8:1")
