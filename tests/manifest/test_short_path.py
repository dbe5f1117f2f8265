"""The short path for rows of plain fields (manifest/jobs.py ``Expander._simple``) against the
general one: the same jobs, ids, warnings and problems, row for row.

A ``count`` column of 1 changes no job and no id, but sends every row down the general path, so
the same rows with and without it must validate alike.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from batchgen.errors import InputError
from batchgen.manifest import Manifest

ROWS: list[dict[str, str]] = [
    {"id": "a-1", "prompt": "a fox", "aspect_ratio": "1:1", "image_size": "1K",
     "meta.sku": "S1"},
    {"id": "", "prompt": "  a teapot  ", "aspect_ratio": "", "image_size": "2k",
     "meta.sku": " 007 "},
    {"id": "my id", "prompt": "an owl", "aspect_ratio": "16:9", "image_size": "", "meta.sku": ""},
    {"id": "", "prompt": "a violin", "aspect_ratio": "", "image_size": "", "meta.sku": "",
     "seed": "42", "temperature": "0.5", "output_text": "yes"},
    {"id": "", "prompt": "a cactus", "aspect_ratio": "", "image_size": "", "meta.sku": "",
     "model": "gemini-2.5-flash-image"},
]

BAD_ROWS: list[dict[str, str]] = [
    {"id": "../up", "prompt": "p1"},  # an id that names another path
    {"id": "a-1", "prompt": "p2"},  # the id of row 1 again
    {"prompt": "a fox", "id": "", "aspect_ratio": "1:1", "image_size": "1K"},  # no id: a new job
    {"prompt": "p3", "aspect_ratio": "7:3"},  # no such ratio
    {"prompt": "p4", "image_size": "3K"},  # no such size
    {"prompt": "p5", "model": "gemini-9-imagine"},  # no such model
    {"prompt": "p6", "model": "gemini-2.5-flash-image", "image_size": "2K"},  # not offered
    {"prompt": "p7", "meta.sku": "{animal}"},  # a placeholder in a row without vars
    {"prompt": "p8", "seed": "many"},
    {"prompt": "p9", "temperature": "3"},
    {"prompt": "p10", "output_text": "perhaps"},
    {"prompt": "a fox", "id": "a-1b", "aspect_ratio": "1:1", "image_size": "1K"},  # new id
    {"prompt": "an owl", "id": "my id"},  # a repeated id, sanitised the same
    {"prompt": "p11\x00"},  # NUL in the prompt
    {"prompt": "p12", "aspect_ratio": "1:1"},
    {"prompt": "p12", "aspect_ratio": "1:1"},  # the same request twice
]

COLUMNS = ["id", "prompt", "aspect_ratio", "image_size", "model", "seed", "temperature",
           "output_text", "meta.sku"]


def _write(path: Path, rows: list[dict[str, str]], *, count: bool) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS + (["count"] if count else []))
        for row in rows:
            writer.writerow([row.get(c, "") for c in COLUMNS] + (["1"] if count else []))
    return path


def _jobs(path: Path) -> list[tuple[object, ...]]:
    manifest = Manifest(path)
    summary = manifest.validate()
    assert summary.jobs == len(ROWS)
    return [(j.job_id, j.prompt, j.model, j.aspect_ratio, j.image_size, j.seed, j.temperature,
             j.output_text, j.user_id, j.source_line, j.meta) for j in manifest.iter_jobs()]


def test_plain_rows_make_the_jobs_the_general_path_makes(tmp_path: Path) -> None:
    short = _jobs(_write(tmp_path / "short.csv", ROWS, count=False))
    general = _jobs(_write(tmp_path / "general.csv", ROWS, count=True))
    assert short == general
    assert short[0][0].startswith("a-1-") and short[2][0].startswith("my-id-")
    assert short[1][1:5] == ("a teapot", "gemini-3-pro-image", None, "2K")
    assert short[3][5:8] == (42, 0.5, True)
    assert short[1][10] == (("sku", "007"),)


def _problems(path: Path) -> list[str]:
    with pytest.raises(InputError) as info:
        Manifest(path).validate()
    return [f"{p.line}|{p.field}|{p.message}" for p in info.value.problems]


def test_bad_rows_get_the_general_paths_problems(tmp_path: Path) -> None:
    short = _problems(_write(tmp_path / "short.csv", ROWS + BAD_ROWS, count=False))
    general = _problems(_write(tmp_path / "general.csv", ROWS + BAD_ROWS, count=True))
    assert short == general
    fields = [s.split("|")[1] for s in short]
    for field in ("id", "aspect_ratio", "image_size", "model", "meta.sku", "seed",
                  "temperature", "output_text", "prompt"):
        assert field in fields, (field, short)
    assert sum("duplicate id" in s for s in short) == 2
    assert sum("duplicate job" in s for s in short) == 1  # p12 twice (row 1 has an id)


def test_jsonl_rows_take_the_same_way(tmp_path: Path) -> None:
    lines = [{"prompt": "a fox", "id": "x1", "meta": {"w": 1.5, "ok": True}},
             {"prompt": "a fox", "aspect_ratio": "4:3", "seed": 7}]
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps(d) + "\n" for d in lines))
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({**d, "count": 1}) + "\n" for d in lines))
    got = [(j.job_id, j.meta, j.seed) for j in Manifest(short).iter_jobs()]
    assert got == [(j.job_id, j.meta, j.seed) for j in Manifest(general).iter_jobs()]
    assert got[0][1] == (("w", 1.5), ("ok", True))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "aspect_ratio": ["1:1"]}) + "\n"
                   + json.dumps({"prompt": "q", "id": 5}) + "\n")
    problems = _problems(bad)
    assert problems[0].startswith("1|aspect_ratio|") and len(problems) == 1
