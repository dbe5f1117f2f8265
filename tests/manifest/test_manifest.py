"""Manifest reading and validation: real files in tmp_path, real images made with Pillow.

Also the job ids that never change, and the specs validation visits."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from batchgen.errors import InputError, Problem, ReferenceError_
from batchgen.manifest import Manifest, ManifestHeader, ValidationSummary
from batchgen.manifest import fields as mf
from batchgen.manifest import references as refs_mod
from batchgen.manifest.references import load_reference_bytes, reference_budget, sniff_image_type
from batchgen.spec import DEFAULT_MODEL, MAX_REFERENCE_IMAGES, JobSpec
from tests.helpers.rows import _jsonl

SAMPLES = Path(__file__).resolve().parents[2] / "sample_manifests"


JOB_ID = re.compile(r"^[a-z0-9][A-Za-z0-9._-]*-[0-9a-f]{10}$")


def png(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")
    return path


def jpeg_bytes(color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jobs_of(path: Path, **kwargs: int | str) -> list[JobSpec]:
    manifest = Manifest(path, **kwargs)  # type: ignore[arg-type]
    manifest.validate()
    return list(manifest.iter_jobs())


def problems_of(path: Path, **kwargs: int | str) -> list[Problem]:
    with pytest.raises(InputError) as info:
        Manifest(path, **kwargs).validate()  # type: ignore[arg-type]
    return info.value.problems


def where(problems: list[Problem]) -> set[tuple[int, str]]:
    return {(p.line, p.field) for p in problems}


# -- the three formats ------------------------------------------------------------------------


def test_yaml_header_defaults_and_normalisation(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.yaml",
        """\
model: gemini-3-pro-image
provider: google
base_url: https://example.test/
defaults:
  aspect_ratio: 16:9
  image_size: 2k
jobs:
  - prompt: a cat
  - prompt: a dog
    image_size: 1k
    aspect_ratio: 1:1
    output_text: true
    temperature: 1
    seed: 7
""",
    )
    manifest = Manifest(path)
    assert manifest.header == ManifestHeader(
        path, "yaml", "gemini-3-pro-image", "google", "https://example.test"
    )
    summary = manifest.validate()
    assert summary == ValidationSummary(2, {"2K": 1, "1K": 1}, {"gemini-3-pro-image": 2}, 0, ())
    cat, dog = manifest.iter_jobs()
    # Unquoted 16:9 must not become YAML 1.1's base-60 integer 969.
    assert (cat.aspect_ratio, cat.image_size, cat.source_line) == ("16:9", "2K", 8)
    assert (dog.aspect_ratio, dog.image_size, dog.output_text) == ("1:1", "1K", True)
    assert (dog.temperature, dog.seed, dog.source_file) == (1.0, 7, str(path))
    assert JOB_ID.match(cat.job_id) and cat.job_id.startswith("a-cat-")


def test_csv_rows_refs_and_text_values(tmp_path: Path) -> None:
    png(tmp_path / "refs" / "a.png")
    png(tmp_path / "refs" / "b.png", (0, 200, 0))
    path = write(
        tmp_path / "m.csv",
        "id,prompt,images,aspect_ratio,image_size,output_text,temperature,seed\n"
        'one,"a cat, sitting",refs/a.png,1:1,1k,yes,0.5,3\n'
        "\n"
        "two,a dog,refs/a.png; refs/b.png,,,0,,\n"
        'three,"say ""hi""",,,4K,FALSE,,\n',
    )
    one, two, three = jobs_of(path)
    assert (one.user_id, one.prompt, one.image_size, one.output_text) == (
        "one",
        "a cat, sitting",
        "1K",
        True,
    )
    assert (one.temperature, one.seed, one.source_line) == (0.5, 3, 2)
    assert [r.source for r in two.references] == ["refs/a.png", "refs/b.png"]
    assert two.references[0].path == (tmp_path / "refs" / "a.png").resolve()
    assert two.references[0].mime_type == "image/png" and len(two.references[0].sha256) == 64
    assert (two.aspect_ratio, two.image_size, two.output_text, two.source_line) == (
        None,
        "1K",
        False,
        4,
    )
    assert (three.prompt, three.image_size, three.output_text) == ('say "hi"', "4K", False)
    # One file, two rows: both share the same pinned Reference object.
    assert one.references[0] is two.references[0]


def test_jsonl_lines_and_cli_model(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '{"prompt": "a cat", "images": "https://example.test/cat.png"}\n'
        "\n"
        '{"prompt": "a dog", "model": "gemini-2.5-flash-image", "count": 2}\n',
    )
    manifest = Manifest(path, model="gemini-3-pro-image-preview")
    assert manifest.header.model == "gemini-3-pro-image-preview"
    summary = manifest.validate()
    assert summary.by_model == {"gemini-3-pro-image-preview": 1, "gemini-2.5-flash-image": 2}
    # The model came from --model, so the warning names the flag, not a manifest line.
    assert any(w.startswith("--model gemini-3-pro-image-preview is deprecated")
               for w in summary.warnings)
    cat, dog0, dog1 = manifest.iter_jobs()
    assert (
        cat.references[0].url == "https://example.test/cat.png" and cat.references[0].path is None
    )
    assert (dog0.source_line, dog0.sample, dog1.sample) == (3, 0, 1)
    assert jobs_of(path)[0].model == DEFAULT_MODEL


def test_yaml_anchors_and_csv_vars_cell(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.yaml",
        """\
x-base: &base
  aspect_ratio: 16:9
jobs:
  - <<: *base
    prompt: a
    aspect_ratio: 1:1
  - <<: *base
    prompt: b
""",
    )
    assert [j.aspect_ratio for j in jobs_of(path)] == ["1:1", "16:9"]
    path = write(
        tmp_path / "m.csv",
        'prompt,vars\n"a {x}","{""x"": [""cat"", ""dog""]}"\n"b {x}",[1]\n',
    )
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (3, "vars")
    write(path, 'prompt,vars\n"a {x}","{""x"": [""cat"", ""dog""]}"\n')
    assert [j.prompt for j in jobs_of(path)] == ["a cat", "a dog"]


def test_not_utf8_reported_on_its_line(tmp_path: Path) -> None:
    for name in ("m.csv", "m.jsonl", "m.yaml"):
        head = {"m.csv": b"prompt\nok\n", "m.jsonl": b'{"prompt": "ok"}\n', "m.yaml": b"jobs:\n"}
        bad = {
            "m.csv": b"caf\xe9\n",
            "m.jsonl": b'{"prompt": "caf\xe9"}\n',
            "m.yaml": b"- caf\xe9\n",
        }
        path = tmp_path / name
        path.write_bytes(head[name] + bad[name])
        (problem,) = problems_of(path)
        assert problem.line == (3 if name == "m.csv" else 2), (name, problem)


def test_same_job_has_same_id_in_every_format(tmp_path: Path) -> None:
    png(tmp_path / "r.png")
    y = write(
        tmp_path / "m.yaml",
        "jobs:\n  - {id: x, prompt: a cat, images: [r.png], aspect_ratio: '3:2', seed: 5}\n",
    )
    c = write(tmp_path / "m.csv", "id,prompt,images,aspect_ratio,seed\nx,a cat,r.png,3:2,5\n")
    j = write(
        tmp_path / "m.jsonl",
        json.dumps(
            {"id": "x", "prompt": "a cat", "images": ["r.png"], "aspect_ratio": "3:2", "seed": 5}
        )
        + "\n",
    )
    ids = {jobs_of(p)[0].job_id for p in (y, c, j)}
    assert len(ids) == 1 and ids.pop().startswith("x-")


# -- matrix, count and ids -------------------------------------------------------------------


def test_matrix_expansion_ids_and_braces(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.yaml",
        """\
jobs:
  - prompt: "a {animal} in {style} style {{literal}}"
    vars: {animal: [cat, dog], style: [oil, pixel art]}
  - id: pets
    prompt: "a {animal}"
    vars:
      animal: [cat]
    count: 2
""",
    )
    jobs = jobs_of(path)
    assert [j.prompt for j in jobs[:4]] == [
        "a cat in oil style {literal}",
        "a cat in pixel art style {literal}",
        "a dog in oil style {literal}",
        "a dog in pixel art style {literal}",
    ]
    assert [j.job_id.rsplit("-", 1)[0] for j in jobs] == [
        "cat-oil",
        "cat-pixel-art",
        "dog-oil",
        "dog-pixel-art",
        "pets-cat",
        "pets-cat-1",
    ]
    assert jobs[1].vars == (("animal", "cat"), ("style", "pixel art"))
    assert jobs[4].user_id == "pets" and [j.sample for j in jobs[4:]] == [0, 1]
    assert all(JOB_ID.match(j.job_id) for j in jobs)


def test_matrix_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '{"prompt": "a {animal} {colour}", "vars": {"animal": ["cat"]}}\n'
        '{"prompt": "a {animal}", "vars": {"animal": ["cat"], "style": ["oil"]}}\n'
        '{"prompt": "a {animal", "vars": {"animal": ["cat"]}}\n'
        '{"prompt": "a {animal}", "vars": {"animal": ["cat", "cat"]}}\n'
        '{"prompt": "no vars keeps {braces} literal"}\n',
    )
    problems = problems_of(path)
    assert where(problems) == {(1, "prompt"), (2, "prompt"), (3, "prompt"), (4, "vars")}
    text = {p.line: p.message for p in problems}
    assert "{colour}" in text[1] and "'style'" in text[2] and "listed twice" in text[4]


def test_prompt_slug_and_count(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.yaml",
        "jobs:\n"
        "  - {prompt: 'Café au lait, on a RAINY day in Paris at noon!', count: 3}\n"
        "  - {prompt: '日本の猫'}\n",
    )
    jobs = jobs_of(path)
    assert [j.job_id[:-11] for j in jobs] == [  # sample 0 has no number: see the test below
        "cafe-au-lait-on-a-rainy",
        "cafe-au-lait-on-a-rainy-1",
        "cafe-au-lait-on-a-rainy-2",
        "job",
    ]
    assert len({j.job_id for j in jobs}) == 4


def test_raising_count_keeps_the_id_of_sample_0(tmp_path: Path) -> None:
    # The id is what the ledger knows a finished job by: sample 0 must not be made (and paid) again.
    path = write(tmp_path / "m.yaml", "jobs:\n  - {id: fox, prompt: a red fox}\n")
    (one,) = jobs_of(path)
    write(path, "jobs:\n  - {id: fox, prompt: a red fox, count: 3}\n")
    three = jobs_of(path)
    assert [j.sample for j in three] == [0, 1, 2]
    assert three[0].job_id == one.job_id and one.job_id.startswith("fox-")
    assert [j.job_id[:-11] for j in three[1:]] == ["fox-1", "fox-2"]
    assert len({j.job_id for j in three}) == 3


def test_ids_stable_when_editing_one_row_or_reordering(tmp_path: Path) -> None:
    rows = ["prompt,aspect_ratio", "a cat,1:1", "a dog,16:9", "a bird,4:3", "a fish,"]
    path = write(tmp_path / "m.csv", "\n".join(rows) + "\n")
    before = [j.job_id for j in jobs_of(path)]
    edited = rows.copy()
    edited[2] = "a dog,9:16"
    write(path, "\n".join(edited) + "\n")
    after = [j.job_id for j in jobs_of(path)]
    assert [a == b for a, b in zip(before, after, strict=True)] == [True, False, True, True]
    write(path, "\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    assert sorted(j.job_id for j in jobs_of(path)) == sorted(before)


def test_sanitised_user_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.yaml",
        "jobs:\n  - {id: 'red shoe #1', prompt: a}\n  - {id: 42, prompt: b}\n",
    )
    first, second = jobs_of(path)
    assert first.job_id.startswith("red-shoe-1-") and first.user_id == "red shoe #1"
    assert second.job_id.startswith("42-") and second.user_id == "42"


def test_reference_hash_cached_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png(tmp_path / "r.png")
    calls: list[str] = []
    real = refs_mod._hash_file

    def counting(path: str) -> tuple[str, bytes]:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(refs_mod, "_hash_file", counting)
    lines = "".join(f'{{"prompt": "p{i}", "images": ["r.png", "./r.png"]}}\n' for i in range(50))
    path = write(tmp_path / "m.jsonl", lines)
    manifest = Manifest(path)
    assert manifest.validate().references == 100
    assert len(list(manifest.iter_jobs())) == 50
    assert len(calls) == 1


# -- validation problems ----------------------------------------------------------------------


def test_every_problem_reported_with_file_line_field(tmp_path: Path) -> None:
    png(tmp_path / "ok.png")
    write(tmp_path / "text.png", "this is not an image\n")
    (tmp_path / "real.png").write_bytes(jpeg_bytes())  # JPEG bytes, .png name: fine
    path = write(
        tmp_path / "m.yaml",
        """\
provider: openai
colour: blue
defaults:
  id: nope
jobs:
  - prompt: ok
    images: [ok.png, real.png]
  - prompt: ""
  - images: ok.png
  - prompt: a
    aspect_ratio: "7:3"
    image_size: 8K
    count: 0
    temperature: 3
    seed: "x"
    output_text: maybe
    flavour: mint
  - prompt: b
    images: [missing.png, text.png, ftp://x/y.png]
  - id: ../x
    prompt: c
  - id: a/b
    prompt: d
  - id: dup
    prompt: e
  - id: dup
    prompt: f
  - prompt: ok
    images: [ok.png, real.png]
  - just a string
""",
    )
    problems = problems_of(path)
    name = str(path)
    assert all(p.file == name for p in problems)
    assert where(problems) == {
        (1, "provider"),
        (2, "colour"),
        (4, "id"),
        (8, "prompt"),
        (9, "prompt"),
        (11, "aspect_ratio"),
        (12, "image_size"),
        (13, "count"),
        (14, "temperature"),
        (15, "seed"),
        (16, "output_text"),
        (17, "flavour"),
        (19, "images"),
        (20, "id"),
        (22, "id"),
        (26, "id"),
        (28, ""),
        (30, ""),
    }
    images = sorted(p.message for p in problems if p.field == "images")
    assert len(images) == 3
    assert any("not found" in m for m in images) and any("not an image" in m for m in images)
    assert any("URL scheme" in m for m in images)
    dup = next(p for p in problems if p.line == 26)
    assert "line 24" in dup.message
    same = next(p for p in problems if p.line == 28)
    assert "line 6" in same.message
    message = str(InputError(problems))
    assert f"{name}:13: count: must be at least 1, not 0" in message
    assert f"{name}:20: id: '../x' contains" in message


def test_yaml_syntax_error_line(tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", "jobs:\n  - prompt: a\n  - prompt: [unclosed\n")
    (problem,) = problems_of(path)
    assert problem.line in (3, 4) and "YAML syntax error" in problem.message


def test_yaml_duplicate_key_and_bad_jobs(tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", "jobs:\n  - prompt: a\n    prompt: b\n")
    assert where(problems_of(path)) == {(3, "prompt")}
    path = write(tmp_path / "n.yaml", "model: gemini-3-pro-image\n")
    assert where(problems_of(path)) == {(1, "jobs")}
    path = write(tmp_path / "o.yaml", "jobs: []\n")
    assert where(problems_of(path)) == {(0, "jobs")}


def test_jsonl_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '{"prompt": "a"}\n'
        '{"prompt": "b",\n'
        '["not", "an", "object"]\n'
        '{"prompt": "c", "provider": "google"}\n'
        '{"prompt": "d", "count": "2", "temperature": true}\n',
    )
    problems = problems_of(path)
    assert where(problems) == {(2, ""), (3, ""), (4, "provider"), (5, "count"), (5, "temperature")}
    assert "manifest-level" in next(p.message for p in problems if p.field == "provider")


def test_csv_unclosed_quote_at_end(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", 'prompt,aspect_ratio\na cat,1:1\n"a dog,16:9\na bird,1:1\n')
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (3, "")
    assert "never closed" in problem.message
    assert str(InputError([problem])).startswith(f"{path}:3: CSV syntax error")


def test_csv_quote_swallowing_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.csv",
        'prompt,aspect_ratio\n"a cat,1:1\na dog,16:9\na bird",1:1\nok,1:1\n',
    )
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (2, "prompt") and "closing quote" in problem.message
    # A legitimately multi-line prompt is fine.
    path = write(tmp_path / "n.csv", 'prompt,aspect_ratio\n"line one,\nline two",1:1\n')
    assert jobs_of(path)[0].prompt == "line one,\nline two"


def test_csv_problems(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.csv",
        'prompt,colour,count\na,red,1\nb,,two\nc,,1,extra\nd"x,,1\n,,3\na,,1\n',
    )
    problems = problems_of(path)
    assert where(problems) == {(1, "colour"), (3, "count"), (4, ""), (6, "prompt"), (7, "")}
    assert "line 2" in next(p.message for p in problems if p.line == 7)
    # Without a prompt column the rows are still checked (issue 20): the missing a.png too.
    assert where(problems_of(write(tmp_path / "n.csv", "id,images\nx,a.png\n"))) == {
        (1, "prompt"), (2, "images")}


def test_seed_must_fit_the_apis_int32(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.yaml",
        "jobs:\n"
        "  - {prompt: a, seed: 2147483647}\n"
        "  - {prompt: b, seed: -2147483648}\n"
        "  - prompt: c\n    seed: 2147483648\n"
        "  - prompt: d\n    seed: 99999999999999999999\n"
        "  - prompt: e\n    seed: -2147483649\n",
    )
    problems = problems_of(path)
    assert where(problems) == {(5, "seed"), (7, "seed"), (9, "seed")}
    assert all("\n" not in str(p) and "32-bit" in p.message for p in problems)
    write(path, "jobs:\n  - {prompt: a, seed: 2147483647}\n  - {prompt: b, seed: -2147483648}\n")
    assert [j.seed for j in jobs_of(path)] == [2**31 - 1, -(2**31)]
    # CSV text, a number past Python's int-conversion limit, and a float that JSON made of one.
    huge = "9" * 5000
    path = write(tmp_path / "m.csv", f"prompt,seed\na,99999999999999999999\nb,{huge}\n")
    problems = problems_of(path)
    assert where(problems) == {(2, "seed"), (3, "seed")}
    assert all(len(str(p)) < 200 for p in problems)
    path = write(tmp_path / "m.jsonl", '{"prompt": "a", "seed": 99999999999999999999}\n')
    assert where(problems_of(path)) == {(1, "seed")}
    path = write(tmp_path / "n.yaml", f"jobs:\n  - prompt: a\n    seed: {huge}\n")
    (problem,) = problems_of(path)
    assert problem.line == 3 and "too large" in problem.message and len(str(problem)) < 200


def test_count_and_matrix_are_capped_before_expanding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "m.yaml",
        "jobs:\n  - prompt: a\n    count: 100000000\n  - prompt: b\n    count: 100001\n",
    )
    problems = problems_of(path)  # quick: nothing is expanded, let alone hashed
    assert where(problems) == {(3, "count"), (5, "count")}
    assert "at most 100,000" in problems[0].message
    path = write(tmp_path / "m.csv", "prompt,count\na,100000000\n")
    assert where(problems_of(path)) == {(2, "count")}
    # 1,000 x 1,000 is the most one row may make; x count 2 (or a third var) is too many.
    values = json.dumps([str(i) for i in range(1000)])
    ok = f'{{"prompt": "{{a}} {{b}}", "vars": {{"a": {values}, "b": {values}}}}}'
    twice = ok[:-1] + ', "count": 2}'
    three = (
        f'{{"prompt": "{{a}} {{b}} {{c}}", "vars": {{"a": {values}, "b": {values}, "c": [1, 2]}}}}'
    )
    path = write(tmp_path / "m.jsonl", f"{twice}\n{three}\n")
    problems = problems_of(path)
    assert where(problems) == {(1, "vars"), (2, "vars")}
    assert "2,000,000 jobs (1000 x 1000 x count 2)" in problems[0].message
    assert "at most 1,000,000 per row" in problems[1].message
    # In YAML the problem points at the vars key.
    path = write(
        tmp_path / "n.yaml",
        f"jobs:\n  - prompt: '{{a}} {{b}}'\n    count: 3\n    vars: {{a: {values}, b: {values}}}\n",
    )
    assert where(problems_of(path)) == {(4, "vars")}
    # The bound itself is allowed (checked on a small cap: a million jobs take seconds to hash).
    monkeypatch.setattr(mf, "MAX_ROW_JOBS", 12)
    row = '{"prompt": "{a} {b}", "vars": {"a": [1, 2, 3], "b": [1, 2]}, "count": %d}\n'
    assert Manifest(write(tmp_path / "ok.jsonl", row % 2)).validate().jobs == 12
    assert where(problems_of(write(tmp_path / "no.jsonl", row % 3))) == {(1, "vars")}


def test_too_many_references(tmp_path: Path) -> None:
    png(tmp_path / "r.png")
    many = ";".join(["r.png"] * (MAX_REFERENCE_IMAGES + 1))
    path = write(tmp_path / "m.csv", f"prompt,images\na,{many}\n")
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (2, "images") and "at most 14" in problem.message
    exactly = ";".join(["r.png"] * MAX_REFERENCE_IMAGES)
    write(path, f"prompt,images\na,{exactly}\n")
    assert len(jobs_of(path)[0].references) == MAX_REFERENCE_IMAGES


@pytest.mark.parametrize(
    ("user_id", "fragment"),
    [
        ("../x", "'..'"),
        ("a/b", "path separator"),
        ("a\\\\b", "path separator"),
        (".hidden", "starts with '.'"),
        ("", "must not be empty"),
        ("a\\u0007b", "control characters"),
        ("###", "no usable characters"),
        ("x" * 101, "longer than 100"),
    ],
)
def test_escaping_ids_rejected(tmp_path: Path, user_id: str, fragment: str) -> None:
    path = write(tmp_path / "m.jsonl", f'{{"id": "{user_id}", "prompt": "a"}}\n')
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (1, "id") and fragment in problem.message


def test_unreadable_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png(tmp_path / "r.png")

    def denied(path: str) -> tuple[str, bytes]:
        raise PermissionError(13, "Permission denied", path)

    # chmod 000 is no obstacle when the tests run as root, so fail the read itself.
    monkeypatch.setattr(refs_mod, "_hash_file", denied)
    (problem,) = problems_of(write(tmp_path / "m.csv", "prompt,images\na,r.png\n"))
    assert (problem.line, problem.field) == (2, "images")
    assert problem.message == "cannot read r.png: Permission denied"


def test_references_judged_by_bytes(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(jpeg_bytes())
    (tmp_path / "fake.jpg").write_bytes(b"GIF89a not accepted")
    path = write(tmp_path / "m.csv", "prompt,images\na,photo.png\nb,fake.jpg\n")
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (3, "images")
    write(path, "prompt,images\na,photo.png\n")
    assert jobs_of(path)[0].references[0].mime_type == "image/jpeg"


def test_sniff_image_type() -> None:
    assert sniff_image_type(b"\x89PNG\r\n\x1a\n" + b"\0" * 8) == "image/png"
    assert sniff_image_type(jpeg_bytes()) == "image/jpeg"
    assert sniff_image_type(b"RIFF\x10\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_image_type(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic") == "image/heic"
    assert sniff_image_type(b"\0\0\0\x18ftypmif1\0\0\0\0mif1miaf") == "image/heif"
    assert sniff_image_type(b"\0\0\0\x18ftypavif\0\0\0\0mif1avif") is None
    assert sniff_image_type(b"\0\0\0\x18ftypmif1\0\0\0\0mif1avif") is None
    assert sniff_image_type(b"GIF89a") is None
    assert sniff_image_type(b"") is None


def test_missing_or_unknown_manifest(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.yaml: manifest does not exist"):
        Manifest(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match=r"m\.txt: unknown manifest type"):
        Manifest(write(tmp_path / "m.txt", "prompt\n"))


def test_iter_jobs_without_validate_raises_first_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "prompt,count\na,1\nb,0\nc,-1\n")
    jobs = Manifest(path).iter_jobs()
    assert next(jobs).prompt == "a"
    with pytest.raises(InputError) as info:
        next(jobs)
    assert where(info.value.problems) == {(3, "count")}


def test_model_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.yaml",
        "model: gemini-3.1-flash-image\ndefaults: {model: gemini-2.5-flash-image}\n"
        "jobs:\n  - {prompt: a}\n  - {prompt: b, model: gemini-3-pro-image}\n",
    )
    flash, pro, lite = "gemini-2.5-flash-image", "gemini-3-pro-image", "gemini-3.1-flash-lite-image"
    assert [j.model for j in jobs_of(path)] == [flash, pro]
    assert [j.model for j in jobs_of(path, model=lite)] == [lite, pro]
    assert where(problems_of(path, model="bad/model")) == {(0, "model")}


# -- shrinking oversize references ------------------------------------------------------------


def test_oversize_reference_is_shrunk(tmp_path: Path) -> None:
    rng = random.Random(1)
    noise = Image.frombytes("RGB", (400, 400), rng.randbytes(400 * 400 * 3))
    big = tmp_path / "big.png"
    noise.save(big)
    png(tmp_path / "small.png")
    limit = 400_000
    path = write(tmp_path / "m.csv", "prompt,images\nedit,big.png;small.png\nplain,small.png\n")
    manifest = Manifest(path, max_request_bytes=limit)
    summary = manifest.validate()
    assert len(summary.warnings) == 1 and summary.warnings[0].startswith(f"{path}:2: ")
    job, plain = manifest.iter_jobs()
    budget = reference_budget(job.references, limit)
    assert budget == (limit * 3 // 4 - 64 * 1024) // 2
    assert reference_budget(plain.references, limit) is None
    data, mime = load_reference_bytes(job.references[0], max_bytes=budget)
    assert mime == "image/jpeg" and len(data) <= budget
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "JPEG" and img.width < 400
    small, small_mime = load_reference_bytes(job.references[1], max_bytes=budget)
    assert small == (tmp_path / "small.png").read_bytes() and small_mime == "image/png"


def test_oversize_reference_that_cannot_be_decoded(tmp_path: Path) -> None:
    # HEIC passes the sniff (the API takes it) but Pillow cannot re-encode it without a plugin.
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(500_000)
    (tmp_path / "photo.heic").write_bytes(heic)
    path = write(tmp_path / "m.jsonl", '{"prompt": "a", "images": ["photo.heic"]}\n')
    assert jobs_of(path)[0].references[0].mime_type == "image/heic"
    (problem,) = problems_of(path, max_request_bytes=400_000)
    assert (problem.line, problem.field) == (1, "images") and "cannot be shrunk" in problem.message


def test_reference_changed_after_validation(tmp_path: Path) -> None:
    ref = png(tmp_path / "r.png")
    (job,) = jobs_of(write(tmp_path / "m.csv", "prompt,images\na,r.png\n"))
    png(ref, (1, 2, 3))
    with pytest.raises(ReferenceError_, match="changed"):
        load_reference_bytes(job.references[0], max_bytes=None)


# -- shipped samples --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["quickstart.yaml", "edit.yaml", "products.csv", "dataset_matrix.yaml", "prompts.jsonl",
     "character.yaml", "edit_sequence.yaml"],
)
def test_sample_manifests_validate(name: str) -> None:
    manifest = Manifest(SAMPLES / name)
    summary = manifest.validate()
    jobs = list(manifest.iter_jobs())
    assert summary.jobs == len(jobs) > 0 and not summary.warnings
    assert len({j.job_id for j in jobs}) == len(jobs)
    if name == "dataset_matrix.yaml":
        assert len(jobs) == 9 and {j.aspect_ratio for j in jobs} == {"1:1"}
    if name == "character.yaml":  # one sheet, a dozen scenes made from it
        assert len(jobs) == 13 and summary.chains is not None and summary.chains.width == 12
    if name == "edit_sequence.yaml":  # a product shot and three edits, one after another
        assert summary.chains is not None and summary.chains.depth == 3
    for ref in (r for j in jobs for r in j.references if not r.parent):
        assert ref.path is not None and ref.path.stat().st_size < 20_000


# Made by the code before the one-pass planning and its fast paths: ids must never change, or
# every resumed run would pay for its images again.
JSONL_IDS = [
    "a-small-watercolor-of-a-fox-ad8ff0a72b", "cafe-creme-a-la-francaise-1ac10ee217",
    "job-1e79ef2a39", "job-417bc62adf", "literal-braces-and-100-more-5e2583a72b",
    "tabs-and-spaces-here-x-y-77e2e63e1b", "a-fox-6be142ec67", "a-fox-1-689207a4fe",
    "a-fox-2-2b5e785b83", "user-id-7-bfe012b7eb", "a-fox-54be9a6edb", "cat-red-17c7246c1f",
    "cat-red-1-285c064ac7", "cat-blue-b4bd9c3e4b", "cat-blue-1-c58881bb8d", "3-red-015c22b727",
    "3-red-1-5125eed536", "3-blue-60a9680ee4", "3-blue-1-52f7daf264", "1-5-red-b30cc065fc",
    "1-5-red-1-5077afdc4a", "1-5-blue-3492eedcca", "1-5-blue-1-6a558ba310", "a-fox-e580196a8e",
    "n-code-1-1c8a223a8a", "a-fox-with-nulls-5759fe0053",
]  # fmt: skip


CSV = 'prompt,count,id\nhello world,,\n"Hello, World!",2,\nplain csv row,,row-1\n'


CSV_IDS = ["hello-world-79522d2a0f", "hello-world-0b76300bd9", "hello-world-1-6b25456669",
           "row-1-08b7ed1d8f"]


def test_job_ids_are_unchanged(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(CSV)
    for path, ids in ((_jsonl(tmp_path / "m.jsonl"), JSONL_IDS), (csv, CSV_IDS)):
        assert [j.job_id for j in Manifest(path).iter_jobs()] == ids  # without validate()
        m = Manifest(path)
        seen: list[JobSpec] = []
        summary = m.validate(visit=seen.append)
        assert [j.job_id for j in seen] == ids and summary.jobs == len(ids)
        assert list(m.iter_jobs()) == seen  # the trusted second pass gives the same specs


def test_visited_specs_are_ordinary_frozen_specs(tmp_path: Path) -> None:
    seen: list[JobSpec] = []
    Manifest(_jsonl(tmp_path / "m.jsonl")).validate(visit=seen.append)
    for job in seen:
        fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(JobSpec)}
        twin = JobSpec(**fields)
        assert job == twin and hash(job) == hash(twin) and repr(job) == repr(twin)
        with pytest.raises(dataclasses.FrozenInstanceError):
            job.prompt = "changed"  # type: ignore[misc]
