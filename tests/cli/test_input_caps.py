"""Issue 19: inputs too big or too deep to be a manifest are one-line problems, exit 2, before
anything is sent (13: deep YAML, 14: line and prompt caps, NUL bytes, 16: pixel bombs)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from batchgen.manifest.fields import MAX_LINE_BYTES, MAX_PROMPT_CHARS
from tests.helpers.cli import cli


def validate(path: Path) -> tuple[int, list[str]]:
    r = cli("validate", path.name, cwd=path.parent)
    return r.code, [line for line in r.stderr.splitlines() if line.strip()]


def test_deeply_nested_yaml_is_one_line_exit_2(tmp_path: Path) -> None:
    m = tmp_path / "deep.yaml"
    m.write_text("jobs:\n  - prompt: a cat\n    meta:\n      x: " + "[" * 5000 + "\n")
    code, lines = validate(m)
    assert code == 2, lines
    assert len(lines) == 1 and "deep.yaml:4" in lines[0] and "nested" in lines[0], lines
    # A manifest as deep as real ones get is fine.
    ok = tmp_path / "ok.yaml"
    ok.write_text("defaults: {meta: {k: v}}\njobs:\n  - prompt: a {a}\n    vars: {a: [x, y]}\n"
                  "    meta: {label: 3}\n")
    assert validate(ok)[0] == 0


def test_a_line_past_the_cap_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    m = tmp_path / "huge.jsonl"
    with m.open("w") as fh:
        fh.write(json.dumps({"prompt": "first"}) + "\n")
        fh.write('{"prompt": "' + "x" * (MAX_LINE_BYTES * 3) + '"}\n')
        fh.write(json.dumps({"prompt": "third"}) + "\n")
        fh.write(json.dumps({"prompt": "y" * (MAX_PROMPT_CHARS + 1)}) + "\n")
    code, lines = validate(m)
    assert code == 2, lines
    assert any("huge.jsonl:2:" in ln and "longer than 4 MiB" in ln for ln in lines), lines
    assert any("huge.jsonl:4: prompt:" in ln and "65,536-token" in ln for ln in lines), lines
    assert not any("huge.jsonl:3" in ln for ln in lines), lines
    csv = tmp_path / "huge.csv"
    csv.write_text('prompt\nfine\n"' + "z" * (MAX_LINE_BYTES + 10) + '"\n')
    code, lines = validate(csv)
    assert code == 2 and any("huge.csv:3" in ln and "4 MiB" in ln for ln in lines), lines


def test_prompt_caps_hold_in_every_format(tmp_path: Path) -> None:
    long_prompt = "w" * (MAX_PROMPT_CHARS + 5)
    y = tmp_path / "m.yaml"
    y.write_text(f"jobs:\n  - prompt: {long_prompt}\n")
    c = tmp_path / "m.csv"
    c.write_text(f"prompt\n{long_prompt}\n")
    for path in (y, c):
        code, lines = validate(path)
        assert code == 2 and lines == [
            f"batchgen: {path.name}:2: prompt: {MAX_PROMPT_CHARS + 5:,} characters, over the "
            f"{MAX_PROMPT_CHARS:,} that fit in the model's 65,536-token input (about 4 "
            "characters a token)"], lines
    at_cap = tmp_path / "cap.csv"
    at_cap.write_text("prompt\n" + "v" * MAX_PROMPT_CHARS + "\n")
    assert validate(at_cap)[0] == 0


def test_a_nul_byte_in_a_csv_prompt_is_refused(tmp_path: Path) -> None:
    m = tmp_path / "nul.csv"
    m.write_bytes(b'prompt,id\n"a cat\x00 on a mat",cat\nplain dog,dog\n')
    code, lines = validate(m)
    assert code == 2, lines
    assert lines == ["batchgen: nul.csv:2: prompt: contains the control character U+0000 at "
                     "character 6: not text a prompt holds (a file saved in the wrong format?)"]
    j = tmp_path / "nul.jsonl"
    j.write_text(json.dumps({"prompt": "tab\tand newline\nare fine"}) + "\n")
    assert validate(j)[0] == 0


def test_a_small_file_of_200_megapixels_is_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 64 * 1024  # small enough never to need shrinking
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n  - prompt: edit this\n    images: [bomb.png]\n")
    code, lines = validate(m)
    assert code == 2, lines
    assert len(lines) == 1 and "m.yaml:3: images: bomb.png: too large to decode" in lines[0]
