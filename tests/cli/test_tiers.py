"""The Flex tier through the CLI against the fake (issue 23): half price with sheds retried, a
model without flex stopped after one request, the flex,standard fallback, google only."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import ledger_lines, run_against, write_manifest

STANDARD_1K = 0.1344  # gemini-3-pro-image, 1120 tokens at $120 per 1M (the table's typical)


def test_flex_runs_every_job_at_half_price_with_sheds_retried(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.flex_shed_rate = 0.3
    m = write_manifest(tmp_path / "m.yaml", [f"flex {i}" for i in range(12)])
    out = tmp_path / "run"
    r = run_against(server, m, out, "--tier", "flex", "--max-attempts", "20", provider="google")
    assert r.code == 0, r.stderr
    lines = ledger_lines(out)
    assert len(lines) == 12 and all(x["status"] == "succeeded" for x in lines)
    assert {x["tier"] for x in lines} == {"flex"}
    # Flex answers take minutes: the default timeout follows, and the run says so.
    assert "flex tier: answers take 1-15 min (timeout 1200s)" in r.stderr
    sent = server.stats.requests_seen()
    assert {x["service_tier"] for x in sent} == {"flex"}
    shed = server.stats.faults["flex_shed"]
    assert shed > 0 and len(sent) == 12 + shed
    # What the fake billed (half its standard price) and what the ledger charged agree.
    assert server.stats.billed_usd == pytest.approx(12 * 0.134 / 2)
    assert sum(float(x["cost_usd"]) for x in lines) == pytest.approx(  # type: ignore[arg-type]
        server.stats.billed_usd, rel=0.05)


def test_a_model_without_flex_stops_after_one_request_naming_the_tier(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    # The table prices flex for this model, the service refuses it (the docs do not say
    # whether image models offer flex): the first 400 stops the run, as a wrong key does.
    server.config.tiers_refused = {"gemini-3-pro-image": ["flex"]}
    m = write_manifest(tmp_path / "m.yaml", [f"pro {i}" for i in range(10)])
    r = run_against(server, m, tmp_path / "run", "--tier", "flex", provider="google")
    assert r.code == 4, r.stderr
    assert server.stats.requests == 1
    assert "flex tier" in r.stderr and "gemini-3-pro-image" in r.stderr
    assert server.stats.billed_images == 0


def test_a_model_the_table_lists_without_flex_is_refused_before_sending(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["lite"], model="gemini-3.1-flash-lite-image")
    r = run_against(server, m, tmp_path / "run", "--tier", "flex", provider="google")
    assert r.code == 2, r.stderr
    assert "gemini-3.1-flash-lite-image: tiers" in r.stderr and "flex" in r.stderr
    assert server.stats.requests == 0


def test_flex_then_standard_falls_back_after_three_sheds(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.flex_shed_rate = 1.0  # flex capacity is gone
    server.config.flex_shed_status = 503
    m = write_manifest(tmp_path / "m.yaml", [f"fb {i}" for i in range(4)])
    out = tmp_path / "run"
    r = run_against(server, m, out, "--tier", "flex,standard", provider="google")
    assert r.code == 0, r.stderr
    assert "flex tier, then standard" in r.stderr
    lines = ledger_lines(out)
    assert {x["tier"] for x in lines} == {"standard"}
    assert all(x["attempts"] == 4 for x in lines), [x["attempts"] for x in lines]
    tiers = [x["service_tier"] for x in server.stats.requests_seen()]
    assert tiers.count("flex") == 12 and tiers.count("standard") == 4
    assert sum(float(x["cost_usd"]) for x in lines) == pytest.approx(  # type: ignore[arg-type]
        4 * STANDARD_1K, rel=0.05)


def test_tier_needs_the_google_provider_and_a_priced_tier(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["x"])
    r = run_against(server, m, tmp_path / "a", "--tier", "flex")  # anyfast
    assert r.code == 2 and "google" in r.stderr, r.stderr
    r = run_against(server, m, tmp_path / "b", "--tier", "priority", provider="google")
    assert r.code == 2 and "priority" in r.stderr and "tiers" in r.stderr, r.stderr
    r = run_against(server, m, tmp_path / "c", "--tier", "cheap", provider="google")
    assert r.code == 2 and "cheap" in r.stderr, r.stderr
    assert server.stats.requests == 0


def test_estimate_shows_standard_flex_and_batch(tmp_path: Path) -> None:
    import json

    from tests.helpers.cli import cli

    m = write_manifest(tmp_path / "m.yaml", [f"e {i}" for i in range(4)])
    est = json.loads(cli("estimate", m, "--out", tmp_path / "x", "--json").stdout)
    assert est["flex_cost_usd"] == pytest.approx(est["cost_usd"] / 2, rel=1e-3)
    assert est["batch_cost_usd"] == pytest.approx(est["cost_usd"] / 2, rel=1e-3)
    text = cli("estimate", m, "--out", tmp_path / "x").stdout
    assert f"flex ${est['flex_cost_usd']:.2f} (run --tier flex)" in text
    lite = write_manifest(tmp_path / "l.yaml", ["l"], model="gemini-3.1-flash-lite-image")
    est = json.loads(cli("estimate", lite, "--out", tmp_path / "y", "--json").stdout)
    assert est["flex_cost_usd"] is None and est["batch_cost_usd"] > 0
    side = cli("estimate", lite, "--out", tmp_path / "y", "--mode", "batch").stdout
    total = [x.split() for x in side.splitlines() if x.lstrip().startswith("total")][-1]
    assert total[-2] == "-", side  # the flex column: no flex price for this model
