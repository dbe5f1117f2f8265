"""Edge cases of input and secrets: absurd seeds, counts and prices, and keys inside URLs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.fake import ThreadedFakeServer

from .conftest import SECRET, clean_env, cli, run_against, write_manifest


@pytest.mark.parametrize("name,text", [
    ("m.yaml", "jobs:\n  - prompt: x\n    seed: 99999999999999999999\n"),
    ("m.csv", "prompt,seed\nx,99999999999999999999\n"),
])
def test_huge_seed_is_one_line_and_exit_2(tmp_path: Path, name: str, text: str) -> None:
    m = tmp_path / name
    m.write_text(text)
    r = cli("validate", m)
    assert r.code == 2, r.output
    assert "Traceback" not in r.output
    line = 3 if name.endswith(".yaml") else 2  # YAML problems point at the key's own line
    assert f"{name}:{line}: seed:" in r.stderr


def test_absurd_count_is_rejected_quickly(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n  - prompt: x\n    count: 100000000\n")  # a typo for 10
    r = cli("validate", m, timeout=20)  # expanding 10^8 jobs would take minutes; 20 s leaves room for a loaded machine
    assert r.code == 2 and "m.yaml:3: count:" in r.stderr, r.output


def test_prices_file_with_a_string_price_is_exit_2(tmp_path: Path) -> None:
    prices = tmp_path / "p.json"
    prices.write_text('{"gemini-3-pro-image": {"output_image_per_1m": "120"}}')
    m = write_manifest(tmp_path / "m.yaml", ["x"])
    r = cli("estimate", m, "--prices", prices)
    assert r.code == 2, r.output
    assert "Traceback" not in r.output


def test_negative_price_cannot_disable_the_budget(server: ThreadedFakeServer,
                                                  tmp_path: Path) -> None:
    prices = tmp_path / "p.json"
    prices.write_text('{"gemini-3-pro-image": {"output_image_per_1m": -120}}')
    m = write_manifest(tmp_path / "m.yaml", [f"x {i}" for i in range(3)])
    r = run_against(server, m, tmp_path / "run", "--prices", str(prices), "--budget", "0.01")
    assert r.code == 2 or server.stats.billed_usd <= 0.01, (r.code, server.stats.billed_usd)


def test_key_inside_the_base_url_never_reaches_run_json(server: ThreadedFakeServer,
                                                         tmp_path: Path) -> None:
    # Some gateways take the token in the path; redact() only knows ?key=/api_key=/apikey=.
    out = tmp_path / "run"
    m = write_manifest(tmp_path / "m.yaml", ["x"])
    r = cli("run", m, "--out", out, "--base-url", f"{server.url}/{SECRET}", "--no-progress",
            env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert SECRET not in r.output  # stderr is clean: the key is registered by then
    leaked = [p.name for p in out.rglob("*") if p.is_file() and SECRET in p.read_text("utf-8",
                                                                                       "replace")]
    assert not leaked, leaked
    assert json.loads((out / "run.json").read_text())  # still a valid run.json


def test_bad_input_creates_nothing_in_an_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "outdir"
    out.mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\nnot json\n')
    r = cli("run", bad, "--fake", "--out", out, "--yes")
    assert r.code == 2, r.output
    assert list(out.iterdir()) == []
