"""``batchgen export``: each format loaded back, in the test, by the library its users load it with.

A module-scoped run folder is made by the CLI against the fake server (a YAML matrix manifest);
other folders are synthetic (ledger lines written directly) to pin down the ledger's shapes: the
flat layout of today, the new one with ``name``/``meta``/``source`` and sub-folders, failures,
a torn last line and ``jobs.jsonl``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from batchgen.export.split import parse_split
from batchgen.fake import FakeConfig, ThreadedFakeServer
from tests.helpers.cli import (
    SECRET,
    Result,
    clean_env,
    cli,
    ledger_lines,
    run_against,
    spawn,
    wait_for,
)

# datasets must never reach the network; it reads these when it is imported.
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


COLUMNS = ("job_id", "name", "prompt", "model", "image_size", "aspect_ratio", "width", "height",
           "seed", "temperature", "sha256", "cost_usd", "attempts", "finished_at", "source",
           "references")


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("hf")
    os.environ.update(OFFLINE, HF_HOME=str(home), HF_DATASETS_CACHE=str(home / "datasets"))
    import datasets

    datasets.disable_progress_bars()
    return datasets


def load(hf: Any, builder: str, tmp: Path, **kwargs: Any) -> Any:
    # A cache of its own per call: two exports to one path must not be served from a cache.
    cache = tmp / f"cache-{len(list(tmp.glob('cache-*')))}"
    return hf.load_dataset(builder, cache_dir=str(cache), **kwargs)


def export(run: Path, fmt: str, out: Path | str, *extra: str, env: dict[str, str] | None = None
           ) -> Result:
    """The CLI as a subprocess when given an environment, else in this process (a subprocess
    costs seconds of imports on a loaded machine; the code run is the same)."""
    if env is not None:
        return cli("export", run, "--format", fmt, "--out", out, *extra, env=env)
    return cli_inprocess("export", run, "--format", fmt, "--out", out, *extra)


def cli_inprocess(*args: str | Path) -> Result:
    from click.testing import CliRunner

    from batchgen.cli.app import main

    root = logging.getLogger()
    saved = (root.handlers[:], root.filters[:], root.level)
    try:
        res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        root.handlers[:], root.filters[:] = saved[0], saved[1]
        root.setLevel(saved[2])
    return Result(res.exit_code, res.stdout, res.stderr)


def succeeded(run: Path) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for line in ledger_lines(run):
        last[str(line["job_id"])] = line
    return {k: v for k, v in last.items() if v["status"] == "succeeded"}


@pytest.fixture(scope="module")
def fake() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET)) as srv:
        yield srv


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, fake: ThreadedFakeServer) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    job: dict[str, Any] = {"id": "pet", "prompt": "a {animal} in {style} style",
                           "vars": {"animal": ["cat", "dog", "owl"], "style": ["oil", "ink"]},
                           "meta": {"sku": "SKU-1", "label": 3, "seed": "not the seed"}}
    manifest = tmp / "pets.yaml"
    manifest.write_text(yaml.safe_dump({"defaults": {"image_size": "1K"}, "jobs": [job]}))
    out = tmp / "run"
    res = run_against(fake, manifest, out)
    assert res.code == 0, res.output
    assert len(succeeded(out)) == 6
    return out


def assert_image_ok(image: Image.Image, row: dict[str, Any]) -> None:
    image.load()  # decodes every pixel
    assert image.size == (row["width"], row["height"])


def split_of(spec: str, job_id: str) -> str:
    return parse_split(spec).of(job_id)


# --- imagefolder -------------------------------------------------------------------------------

def test_imagefolder_loads_with_datasets_and_split_is_stable(
        run: Path, hf: Any, tmp_path: Path) -> None:
    spec = "train=0.5,test=0.5"
    out = tmp_path / "ds"
    res = export(run, "imagefolder", out, "--split", spec)
    assert res.code == 0, res.output
    assert "exported 6 images" in res.stderr
    done = succeeded(run)
    ds = load(hf, "imagefolder", tmp_path, data_dir=str(out))
    assert set(ds) <= {"train", "test"}
    assert sum(len(ds[s]) for s in ds) == len(done)
    seen: dict[str, str] = {}
    for split in ds:
        assert set(COLUMNS) <= set(ds[split].column_names)
        for row in ds[split]:
            assert_image_ok(row["image"], row)
            rec = done[row["job_id"]]
            assert row["prompt"] == rec["prompt"] and row["sha256"] == rec["sha256"]
            assert row["model"] == rec["model"] and row["image_size"] == "1K"
            assert hashlib.sha256(_png_bytes(out, split, row["job_id"])).hexdigest() == \
                rec["sha256"]
            seen[row["job_id"]] = split
    assert seen == {job_id: split_of(spec, job_id) for job_id in done}
    # Images are hard links to the run folder's, not copies.
    for job_id, rec in done.items():
        linked = next((out / seen[job_id]).glob(f"images/*/{job_id}.png"))
        assert os.path.samefile(linked, run / rec["outputs"][0])
    # A second export, to another path, puts every job in the same split.
    again = tmp_path / "again"
    assert export(run, "imagefolder", again, "--split", spec).code == 0
    for split in seen.values():
        assert (out / split / "metadata.jsonl").read_bytes() == \
            (again / split / "metadata.jsonl").read_bytes()
    assert not list(tmp_path.glob("*.partial-*"))


def _png_bytes(out: Path, split: str, job_id: str) -> bytes:
    return next((out / split).glob(f"images/*/{job_id}.png")).read_bytes()


def test_meta_columns_when_the_manifest_has_meta(run: Path, hf: Any, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert export(run, "imagefolder", out).code == 0
    ds = load(hf, "imagefolder", tmp_path, data_dir=str(out))["train"]
    assert ds.column_names.count("sku") == 1 and set(ds["sku"]) == {"SKU-1"}
    assert set(ds["label"]) == {3}
    # A meta field named like a provenance column keeps both, the user's under meta_.
    assert set(ds["meta_seed"]) == {"not the seed"}


def test_edited_meta_reruns_nothing_and_shows_in_the_next_export(
        fake: ThreadedFakeServer, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    run = tmp_path / "run"

    def write(label: str) -> None:
        manifest.write_text(yaml.safe_dump({"jobs": [
            {"id": "shoe", "prompt": "a red shoe", "meta": {"label": label}},
            {"id": "hat", "prompt": "a hat", "meta": {"label": "hat"}}]}))

    write("shoe")
    assert run_against(fake, manifest, run).code == 0
    lines = len(ledger_lines(run))
    write("sneaker")
    res = run_against(fake, manifest, run)
    assert res.code == 0 and "nothing to do" in res.stderr, res.output
    assert len(ledger_lines(run)) == lines  # nothing was sent again
    assert export(run, "parquet", tmp_path / "pq").code == 0
    labels = {r["name"]: r["label"] for r in read_parquet(tmp_path / "pq")}
    assert labels == {"shoe": "sneaker", "hat": "hat"}


def test_imagefolder_metadata_keeps_its_types_for_datasets(hf: Any, tmp_path: Path) -> None:
    """JSON has no types: datasets infers them from the first rows of each metadata file."""
    lines = synth_run(tmp_path / "run", 12, legacy=False)
    last = sorted(lines)[-1]
    rec = lines[last]
    rec["meta"]["rare"] = 7  # one job only, and the last in job id order
    with (tmp_path / "run" / "ledger.jsonl").open("a") as fh:
        fh.write(json.dumps(rec) + "\n")
    # One folder: the row that gives `rare` a value is written first.
    out = tmp_path / "one"
    res = export(tmp_path / "run", "imagefolder", out)
    assert res.code == 0, res.output
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    # item00 gives every other column a value; then the one row with `rare`, then the rest.
    assert [r["job_id"] for r in rows[:2]] == [sorted(lines)[0], last]
    assert rows[1]["rare"] == 7 and sorted(r["job_id"] for r in rows) == sorted(lines)
    ds = load(hf, "imagefolder", tmp_path, data_dir=str(out))["train"]
    assert len(ds) == 12 and ds.features["rare"].dtype == "int64"
    assert sorted(ds["rare"], key=str) == [7] + [None] * 11
    # Split folders where `rare` has a value in one split only: metadata.parquet, typed.
    spec = "train=0.5,test=0.5"
    out = tmp_path / "split"
    res = export(tmp_path / "run", "imagefolder", out, "--split", spec)
    assert res.code == 0, res.output
    assert "metadata.parquet" in res.stderr
    assert sorted(p.name for p in out.glob("*/metadata.*")) == ["metadata.parquet"] * 2
    ds = load(hf, "imagefolder", tmp_path, data_dir=str(out))
    assert sum(len(ds[s]) for s in ds) == 12
    for split in ds:
        assert ds[split].features["rare"].dtype == "int64"
        for row in ds[split]:
            assert split_of(spec, row["job_id"]) == split
            assert_image_ok(row["image"], row)
            assert row["rare"] == (7 if row["job_id"] == last else None)


def test_meta_named_like_a_file_column_loads_as_text(hf: Any, tmp_path: Path) -> None:
    """datasets opens every `*file_name` column of an imagefolder as a file: such meta keys are
    text columns under another name, and a user's own `meta_image` keeps its name."""
    lines = synth_run(tmp_path / "run", 4, legacy=False)
    with (tmp_path / "run" / "ledger.jsonl").open("a") as fh:
        for job_id, rec in lines.items():
            rec["meta"] = {"file_name": f"orig-{job_id}.png", "mask_file_name": "m.png",
                           "image": "hero", "meta_image": "own"}
            fh.write(json.dumps(rec) + "\n")
    out = tmp_path / "if"
    res = export(tmp_path / "run", "imagefolder", out)
    assert res.code == 0, res.output
    ds = load(hf, "imagefolder", tmp_path, data_dir=str(out))["train"]
    assert len(ds) == 4
    for row in ds:
        assert row["meta_file_name_text"] == f"orig-{row['job_id']}.png"
        assert row["mask_file_name_text"] == "m.png"
        assert row["meta_image"] == "own" and row["meta_meta_image"] == "hero"
        assert_image_ok(row["image"], row)
    assert not any(c.endswith("file_name") for c in ds.column_names)


# --- parquet -----------------------------------------------------------------------------------

def test_parquet_loads_with_pyarrow_and_datasets(run: Path, hf: Any, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "pq"
    res = export(run, "parquet", out, "--rows-per-file", "4")
    assert res.code == 0, res.output
    files = sorted(out.glob("*.parquet"))
    assert [f.name for f in files] == ["part-000000.parquet", "part-000001.parquet"]
    done = succeeded(run)
    tables = [pq.read_table(f) for f in files]
    assert [t.num_rows for t in tables] == [4, 2]
    rows = [r for t in tables for r in t.to_pylist()]
    assert sorted(r["job_id"] for r in rows) == [r["job_id"] for r in rows] == sorted(done)
    for r in rows:
        assert set(COLUMNS) <= set(r)
        assert hashlib.sha256(r["image"]["bytes"]).hexdigest() == done[r["job_id"]]["sha256"]
        assert_image_ok(Image.open(io.BytesIO(r["image"]["bytes"])), r)
    # The image bytes are stored plain (each is distinct: a dictionary of them is waste), every
    # other column as pyarrow would by default; the paths named are the file's own.
    from batchgen.export.parquet import leaf_paths

    meta = pq.ParquetFile(files[0]).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings
                 for i in range(meta.num_columns)}
    assert sorted(encodings) == sorted(leaf_paths(tables[0].schema))
    assert "RLE_DICTIONARY" not in encodings["image.bytes"]
    assert all("RLE_DICTIONARY" in e for p, e in encodings.items() if p != "image.bytes")
    ds = load(hf, "parquet", tmp_path, data_files=[str(f) for f in files])["train"]
    assert len(ds) == len(done)
    assert type(ds.features["image"]).__name__ == "Image"
    for row in ds:
        assert isinstance(row["image"], Image.Image)
        assert_image_ok(row["image"], row)
        assert row["references"] == []


# --- webdataset --------------------------------------------------------------------------------

def test_webdataset_loads_with_webdataset(run: Path, tmp_path: Path) -> None:
    import webdataset as wds

    out = tmp_path / "wds"
    res = export(run, "webdataset", out, "--rows-per-file", "4")
    assert res.code == 0, res.output
    shards = sorted(out.glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar"]
    done = succeeded(run)
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("pil"))
    assert len(samples) == len(done)
    for s in samples:
        meta = s["json"]
        assert set(COLUMNS) <= set(meta)
        assert s["__key__"] == meta["job_id"] and meta["job_id"] in done
        assert_image_ok(s["png"], meta)

    # Shards are limited by bytes too.
    small = tmp_path / "small"
    assert export(run, "webdataset", small, "--shard-size", "4KB").code == 0
    many = sorted(small.glob("shard-*.tar"))
    assert len(many) > 1
    for shard in many:
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
        assert members and sum(512 + -(-m.size // 512) * 512 for m in members) <= 4000
    again = list(wds.WebDataset([str(s) for s in many], shardshuffle=False))
    assert [s["__key__"] for s in again] == sorted(done)


# --- re-export ---------------------------------------------------------------------------------

def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".batchgen-export.json"}


def test_reexport_after_more_jobs_equals_one_export_at_the_end(
        fake: ThreadedFakeServer, tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"jobs": [
        {"id": "a", "prompt": "a {x}", "vars": {"x": [f"thing {i}" for i in range(8)]}}]}))
    run = tmp_path / "run"
    assert run_against(fake, manifest, run, "--limit", "3").code == 0
    spec = "train=0.6,test=0.4"
    early = {}
    for fmt in ("imagefolder", "webdataset", "parquet"):
        res = export(run, fmt, tmp_path / fmt, "--split", spec, "--rows-per-file", "2")
        assert res.code == 0, res.output
        early[fmt] = _tree(tmp_path / fmt)
    assert run_against(fake, manifest, run).code == 0
    for fmt in ("imagefolder", "webdataset", "parquet"):
        res = export(run, fmt, tmp_path / fmt, "--split", spec, "--rows-per-file", "2")
        assert res.code == 0, res.output
        fresh = tmp_path / f"{fmt}-fresh"
        assert export(run, fmt, fresh, "--split", spec, "--rows-per-file", "2").code == 0
        assert _tree(tmp_path / fmt) == _tree(fresh), fmt
        assert _tree(tmp_path / fmt) != early[fmt]
    assert len(json.loads((tmp_path / "parquet" / ".batchgen-export.json").read_text())
               ["columns"]) >= len(COLUMNS)
    assert not list(tmp_path.glob("*.partial-*")) and not list(tmp_path.glob("*.old-*"))


# --- synthetic run folders: the ledger's shapes ------------------------------------------------

def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + i % 5, 6), (i * 37 % 256, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def synth_run(path: Path, n: int, *, legacy: bool, failed: tuple[int, ...] = (),
              torn: bool = False) -> dict[str, dict[str, Any]]:
    """A run folder written directly: the flat layout of today, or the new shape."""
    path.mkdir(parents=True)
    lines: dict[str, dict[str, Any]] = {}
    with (path / "ledger.jsonl").open("w") as ledger:
        for i in range(n):
            job_id = f"item{i:02d}-{hashlib.sha256(str(i).encode()).hexdigest()[:10]}"
            data = _png(i)
            rel = f"images/{job_id}.png" if legacy else f"images/{job_id[-2:]}/{job_id}.png"
            ok = i not in failed
            rec: dict[str, Any] = {
                "job_id": job_id, "status": "succeeded" if ok else "failed",
                "prompt": f"prompt {i}", "attempts": 1, "outputs": [rel] if ok else [],
                "cost_usd": 0.134 if ok else 0.0, "finished_at": f"2026-12-01T10:00:{i:02d}Z",
                "error": None if ok else {"kind": "blocked", "retryable": False,
                                          "http_status": None, "message": "IMAGE_SAFETY"},
                "model": "gemini-3-pro-image", "image_size": "1K", "aspect_ratio": "1:1",
                "seed": i, "width": 8 + i % 5, "height": 6, "mime_type": "image/png",
                "sha256": hashlib.sha256(data).hexdigest() if ok else None,
                "references": ["refs/a.png"] if legacy else [{"path": "refs/a.png",
                                                              "sha256": "ab" * 32}],
            }
            if not legacy:
                rec.update(name=f"row{i}", source=f"m.yaml:{i + 3}", temperature=0.5,
                           meta={"sku": f"S{i}", "weight": i if i % 2 else i + 0.5,
                                 "mixed": i if i % 3 else "text", "prompt": "shadowed"})
            if ok:
                (path / rel).parent.mkdir(parents=True, exist_ok=True)
                (path / rel).write_bytes(data)
            ledger.write(json.dumps(rec) + "\n")
            lines[job_id] = rec
        if torn:
            ledger.write('{"job_id": "torn-1", "status": "succ')
    return lines


def read_parquet(out: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return [r for f in sorted(out.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_flat_legacy_run_folder_exports(tmp_path: Path) -> None:
    lines = synth_run(tmp_path / "run", 5, legacy=True, torn=True)
    res = export(tmp_path / "run", "parquet", tmp_path / "pq")
    assert res.code == 0, res.output
    rows = read_parquet(tmp_path / "pq")
    assert [r["job_id"] for r in rows] == sorted(lines)
    for r in rows:
        assert r["name"] is None and r["source"] is None and r["temperature"] is None
        assert r["references"] == [{"path": "refs/a.png", "sha256": None}]
        assert hashlib.sha256(r["image"]["bytes"]).hexdigest() == lines[r["job_id"]]["sha256"]
    res = export(tmp_path / "run", "imagefolder", tmp_path / "if")
    assert res.code == 0, res.output
    meta = [json.loads(x) for x in (tmp_path / "if" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 5 and all((tmp_path / "if" / m["file_name"]).is_file() for m in meta)


def test_new_ledger_shape_meta_flattened_and_typed(tmp_path: Path) -> None:
    lines = synth_run(tmp_path / "run", 6, legacy=False, failed=(2,))
    res = export(tmp_path / "run", "parquet", tmp_path / "pq")
    assert res.code == 0, res.output
    assert "1 failed job left out" in res.stderr
    rows = read_parquet(tmp_path / "pq")
    assert [r["job_id"] for r in rows] == sorted(k for k, v in lines.items()
                                                  if v["status"] == "succeeded")
    for r in rows:
        rec = lines[r["job_id"]]
        assert r["name"] == rec["name"] and r["source"] == rec["source"]
        assert r["sku"] == rec["meta"]["sku"]
        assert r["weight"] == float(rec["meta"]["weight"])  # ints and floats: one float column
        assert r["mixed"] == str(rec["meta"]["mixed"])  # numbers and text: one text column
        assert r["meta_prompt"] == "shadowed" and r["prompt"] == rec["prompt"]
        assert r["references"] == [{"path": "refs/a.png", "sha256": "ab" * 32}]
        assert r["temperature"] == 0.5


def test_jobs_file_labels_win_and_only_current_jobs_export(tmp_path: Path) -> None:
    lines = synth_run(tmp_path / "run", 6, legacy=False)
    current = sorted(lines)[:4]
    with (tmp_path / "run" / "jobs.jsonl").open("w") as fh:
        for job_id in current:
            fh.write(json.dumps({"job_id": job_id, "name": "renamed", "source": "m.yaml:9",
                                 "meta": {"sku": "NEW", "colour": "red"}}) + "\n")
    res = export(tmp_path / "run", "webdataset", tmp_path / "wds")
    assert res.code == 0, res.output
    assert "2 jobs no longer in the manifest left out" in res.stderr
    with tarfile.open(tmp_path / "wds" / "shard-000000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar.getmembers()  # type: ignore[arg-type]
                 if m.name.endswith(".json")]
    assert [m["job_id"] for m in metas] == current
    assert {(m["name"], m["sku"], m["colour"], m["source"]) for m in metas} == {
        ("renamed", "NEW", "red", "m.yaml:9")}
    assert all("weight" not in m for m in metas)  # the manifest's meta now, not the ledger's


def test_include_failed_keeps_failures_without_image(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", 4, legacy=False, failed=(1, 3))
    res = export(tmp_path / "run", "parquet", tmp_path / "pq", "--include-failed")
    assert res.code == 0, res.output
    rows = read_parquet(tmp_path / "pq")
    assert len(rows) == 4
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 2
    assert all(r["image"] is None and r["error_kind"] == "blocked" for r in failed)
    res = export(tmp_path / "run", "imagefolder", tmp_path / "if", "--include-failed")
    assert res.code == 2 and "--include-failed" in res.stderr


# --- safety and bad input ----------------------------------------------------------------------

def test_failed_export_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    lines = synth_run(tmp_path / "run", 4, legacy=True)
    out = tmp_path / "wds"
    assert export(tmp_path / "run", "webdataset", out).code == 0
    before = _tree(out)
    # A stale staging folder of a killed export is cleaned up (pid 2**22 + 7 is never alive).
    stale = tmp_path / f"wds.partial-{2**22 + 7}"
    stale.mkdir()
    # An image that cannot be read stops the export half way: exit 4, nothing half-written.
    victim = tmp_path / "run" / f"images/{sorted(lines)[2]}.png"
    victim.unlink()
    victim.mkdir()
    res = export(tmp_path / "run", "webdataset", out)
    assert res.code == 4, res.output
    assert _tree(out) == before
    assert not list(tmp_path.glob("wds.*"))
    # An image deleted by hand is left out with a warning.
    victim.rmdir()
    res = export(tmp_path / "run", "webdataset", out)
    assert res.code == 0, res.output
    assert "1 image missing" in res.stderr


def test_killed_or_interrupted_export_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", 500, legacy=False)
    out = tmp_path / "wds"
    args = ("export", tmp_path / "run", "--format", "webdataset", "--out", out,
            "--rows-per-file", "1")
    assert cli(*args).code == 0
    before = _tree(out)
    for sig in (signal.SIGKILL, signal.SIGINT):
        proc = spawn(*args, env=clean_env())
        staging = f"wds.partial-{proc.pid}/shard-*"
        assert wait_for(lambda pattern=staging: list(tmp_path.glob(pattern)),
                        timeout=60), proc.communicate()
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        assert _tree(out) == before
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "is as it was" in err, err
            assert not list(tmp_path.glob("wds.partial-*"))
        else:
            assert list(tmp_path.glob("wds.partial-*"))  # what kill -9 leaves ...
    res = cli(*args)
    assert res.code == 0, res.output
    assert not list(tmp_path.glob("wds.partial-*"))  # ... the next export removes
    assert _tree(out) == before


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    synth_run(tmp_path / "run", 2, legacy=True)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    cases = [
        (tmp_path / "nope", ["--format", "parquet", "--out", str(tmp_path / "o")], "no such"),
        (tmp_path / "plain", ["--format", "parquet", "--out", str(tmp_path / "o")],
         "not a batchgen run folder"),
        (tmp_path / "run", ["--format", "parquet", "--out", str(tmp_path / "plain")],
         "no batchgen export"),
        (tmp_path / "run", ["--format", "parquet", "--out", str(tmp_path / "o"),
                            "--split", "train=0.9,test=0.2"], "add up to"),
        (tmp_path / "run", ["--format", "webdataset", "--out", str(tmp_path / "o"),
                            "--shard-size", "lots"], "--shard-size"),
    ]
    for run, args, needle in cases:
        res = cli_inprocess("export", run, *args)
        assert res.code == 2, (args, res.output)
        assert res.stderr.count("\n") == 1 and needle in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert (tmp_path / "plain" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("blocked", "fmt", "out", "extra"), [
    ("pyarrow", "parquet", "local", "parquet"),
    ("s3fs", "imagefolder", "s3://bucket/x", "s3"),
])
def test_missing_optional_dependency_names_the_pip_command(
        tmp_path: Path, blocked: str, fmt: str, out: str, extra: str) -> None:
    synth_run(tmp_path / "run", 2, legacy=True)
    target = str(tmp_path / "o") if out == "local" else out
    code = (f"import sys; sys.modules[{blocked!r}] = None; "
            "from batchgen.cli.app import main; "
            f"sys.argv = ['batchgen', 'export', {str(tmp_path / 'run')!r}, '--format', {fmt!r},"
            f" '--out', {target!r}]; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"pip install 'batchgen[{extra}]'" in proc.stderr
    assert proc.stderr.count("\n") == 1


# --- object storage ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    return clean_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                     AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)


def test_export_to_s3_against_moto(run: Path, moto: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=moto,
                           use_listings_cache=False)
    fs.mkdir("exports")
    env = s3_env(moto)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                 "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, env[name])
    done = succeeded(run)
    res = export(run, "parquet", "s3://exports/pets", "--split", "train=0.5,test=0.5",
                 "--rows-per-file", "2", env=env)
    assert res.code == 0, res.output
    keys = sorted(fs.find("exports/pets"))
    assert "exports/pets/.batchgen-export.json" in keys
    assert not fs.exists("exports/pets.partial-0") and not [k for k in fs.ls("exports")
                                                             if ".partial-" in k]
    parts = [k for k in keys if k.endswith(".parquet")]
    rows = [r for k in parts for r in pq.read_table(k, filesystem=fs).to_pylist()]
    assert sorted(r["job_id"] for r in rows) == sorted(done)
    for k in parts:
        split = k.split("/")[2]
        assert all(split_of("train=0.5,test=0.5", r["job_id"]) == split
                   for r in pq.read_table(k, filesystem=fs).to_pylist())
    for r in rows:
        Image.open(io.BytesIO(r["image"]["bytes"])).load()

    # Again without a split, in this process: the old files go, the new ones stay whole.
    res = export(run, "parquet", "s3://exports/pets")
    assert res.code == 0, res.output
    assert sorted(k for k in fs.find("exports/pets") if k.endswith(".parquet")) == [
        "exports/pets/part-000000.parquet"]

    res = export(run, "imagefolder", "s3://exports/folder")
    assert res.code == 0, res.output
    meta = [json.loads(x) for x in fs.cat("exports/folder/metadata.jsonl").splitlines()]
    assert len(meta) == len(done)
    for m in meta:
        Image.open(io.BytesIO(fs.cat(f"exports/folder/{m['file_name']}"))).load()

    fs.pipe("exports/mine/notes.txt", b"mine")
    res = export(run, "parquet", "s3://exports/mine")
    assert res.code == 2 and "no batchgen export" in res.stderr
    assert fs.cat("exports/mine/notes.txt") == b"mine"
