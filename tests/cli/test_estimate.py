"""``batchgen estimate``: counts, the price table's figures, timing, and what a run folder has done."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import REPO, cli, ledger_lines, run_against
from tests.helpers.images import make_image

PRICES: dict[str, Any] = json.loads((REPO / "batchgen" / "data" / "models.json").read_text())


TEXT_TOKENS = 300  # the typical thinking + text output the estimate assumes per image


def expected_cost(prompt: str, size: str, refs: int, model: str = "gemini-3-pro-image",
                  prices: dict[str, Any] = PRICES) -> float:
    """One job, from the price table: image output + text output + prompt and reference input."""
    p = prices[model]
    prompt_tokens = len(prompt) // 4 + 1 + refs * p["input_image_tokens"]
    return (p["image_tokens"][size] * p["output_image_per_1m"]
            + TEXT_TOKENS * p["output_text_per_1m"]
            + prompt_tokens * p["input_per_1m"]) / 1e6


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, list[tuple[str, str, int, str]]]:
    """A manifest of 1K, 2K and 4K jobs, some with references, one on another model."""
    make_image(tmp_path / "ref1.png")
    make_image(tmp_path / "ref2.jpg", fmt="JPEG")
    jobs = [
        {"prompt": "a red fox in snow", "count": 3},  # 1K by default
        {"prompt": "a city at night, 2K", "image_size": "2K", "aspect_ratio": "16:9"},
        {"prompt": "a mountain lake", "image_size": "2K"},
        {"prompt": "this mug on a table, 4K", "image_size": "4K",
         "images": ["ref1.png", "ref2.jpg"]},
        {"prompt": "the logo on a shirt", "images": ["ref1.png"], "image_size": "1K"},
        {"prompt": "a quick sketch", "model": "gemini-2.5-flash-image"},
    ]
    manifest = tmp_path / "mixed.yaml"
    manifest.write_text(json.dumps({"jobs": jobs}))
    # (prompt, size, references, model) per job, count expanded.
    expanded = [("a red fox in snow", "1K", 0, "gemini-3-pro-image")] * 3 + [
        ("a city at night, 2K", "2K", 0, "gemini-3-pro-image"),
        ("a mountain lake", "2K", 0, "gemini-3-pro-image"),
        ("this mug on a table, 4K", "4K", 2, "gemini-3-pro-image"),
        ("the logo on a shirt", "1K", 1, "gemini-3-pro-image"),
        ("a quick sketch", "1K", 0, "gemini-2.5-flash-image"),
    ]
    return manifest, expanded


def estimate_json(*args: str | Path) -> dict[str, Any]:
    r = cli("estimate", *args, "--json")
    assert r.code == 0, r.output
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_estimate_matches_the_price_table(mixed: tuple[Path, list[Any]], tmp_path: Path) -> None:
    manifest, jobs = mixed
    est = estimate_json(manifest, "--out", tmp_path / "run")
    assert est["jobs"] == est["images"] == 8 and est["done"] == 0
    assert est["by_size"] == {"1K": 5, "2K": 2, "4K": 1}
    assert est["by_model"] == {"gemini-3-pro-image": 7, "gemini-2.5-flash-image": 1}
    assert est["references"] == 3
    assert est["assumed_text_tokens_per_image"] == TEXT_TOKENS
    assert est["cost_usd"] == pytest.approx(sum(expected_cost(*j) for j in jobs), abs=1e-4)

    rows = {(r["item"], r["model"], r["image_size"]): r for r in est["rows"]}
    pro = "gemini-3-pro-image"
    one_k = rows[("image output", pro, "1K")]
    assert one_k["quantity"] == 4 and one_k["unit_usd"] == pytest.approx(1120 * 120 / 1e6)
    assert rows[("image output", pro, "2K")]["unit_usd"] == pytest.approx(0.1344)
    four_k = rows[("image output", pro, "4K")]
    assert four_k["quantity"] == 1 and four_k["subtotal_usd"] == pytest.approx(2000 * 120 / 1e6)
    flash = rows[("image output", "gemini-2.5-flash-image", "1K")]
    assert flash["unit_usd"] == pytest.approx(1290 * 30 / 1e6)
    refs = rows[("reference images input", pro, None)]
    assert refs["quantity"] == 3 and refs["subtotal_usd"] == pytest.approx(3 * 560 * 2 / 1e6)
    assert sum(r["subtotal_usd"] for r in est["rows"]) == pytest.approx(est["cost_usd"], abs=1e-4)

    human = cli("estimate", manifest, "--out", tmp_path / "run")
    assert human.code == 0, human.output
    assert f"${est['cost_usd']:.2f}" in human.stdout and "4K" in human.stdout


def test_time_follows_concurrency_latency_and_rpm(mixed: tuple[Path, list[Any]],
                                                  tmp_path: Path) -> None:
    manifest, _ = mixed
    out = tmp_path / "run"
    est = estimate_json(manifest, "--out", out, "--concurrency", "3", "--latency", "20")
    assert est["eta_s"] == math.ceil(8 / 3) * 20
    est = estimate_json(manifest, "--out", out, "--concurrency", "8", "--latency", "20",
                        "--rpm", "4")
    assert est["eta_s"] == 8 / 4 * 60
    assert "time: ~2m 00s" in cli("estimate", manifest, "--out", out, "--rpm", "4").stdout


def test_prices_file_overrides_the_table(mixed: tuple[Path, list[Any]], tmp_path: Path) -> None:
    manifest, jobs = mixed
    base = estimate_json(manifest, "--out", tmp_path / "run")
    override = tmp_path / "prices.json"
    override.write_text(json.dumps({"gemini-3-pro-image": {"output_image_per_1m": 60.0}}))
    cheaper = estimate_json(manifest, "--out", tmp_path / "run", "--prices", override)
    prices = json.loads(json.dumps(PRICES))
    prices["gemini-3-pro-image"]["output_image_per_1m"] = 60.0
    want = sum(expected_cost(*j, prices=prices) for j in jobs)  # type: ignore[misc]
    assert cheaper["cost_usd"] == pytest.approx(want, abs=1e-4)
    assert cheaper["cost_usd"] < base["cost_usd"] - 0.4


def test_a_partly_done_run_folder_counts_only_what_is_left(
    server: ThreadedFakeServer, mixed: tuple[Path, list[Any]], tmp_path: Path
) -> None:
    manifest, jobs = mixed
    out = tmp_path / "run"
    assert run_against(server, manifest, out, "--limit", "3").code == 0
    done = ledger_lines(out)
    assert len(done) == 3
    spent_would_be = sum(
        expected_cost(str(r["prompt"]), str(r["image_size"]), len(r["references"]),  # type: ignore[arg-type]
                      str(r["model"]))
        for r in done
    )
    est = estimate_json(manifest, "--out", out)
    assert (est["done"], est["jobs"], est["total"]) == (3, 5, 8)
    full = sum(expected_cost(*j) for j in jobs)
    assert est["cost_usd"] == pytest.approx(full - spent_would_be, abs=1e-4)
    assert sum(est["by_size"].values()) == 5
    # --limit and --only narrow it like they narrow run.
    assert estimate_json(manifest, "--out", out, "--limit", "2")["jobs"] == 2
    assert estimate_json(manifest, "--out", out, "--only", "a-quick*")["jobs"] == 1

    # Without --out the folder is jobs/<manifest stem>, relative to where it runs.
    default = tmp_path / "jobs" / "mixed"
    default.mkdir(parents=True)
    shutil.copy(out / "ledger.jsonl", default / "ledger.jsonl")
    shutil.copytree(out / "images", default / "images")  # a recorded image must be on disk
    r = cli("estimate", manifest, "--json", cwd=tmp_path)
    assert r.code == 0, r.output
    assert json.loads(r.stdout)["done"] == 3


def test_a_bad_manifest_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - prompt: fine\n  - prompt: wrong\n    image_size: 3K\n")
    r = cli("estimate", bad)
    assert r.code == 2
    assert f"{bad}:4: image_size" in r.stderr
    assert r.stdout == ""
