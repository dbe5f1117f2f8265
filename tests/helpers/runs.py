"""Runs of the CLI against the fake server, and what they spent and billed, for the scenarios
that stop, kill, resume and merge runs."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import (
    SECRET,
    Result,
    clean_env,
    cli,
    ledger_lines,
    run_against,
)


def succeeded(out: Path) -> dict[str, dict[str, object]]:
    return {str(r["prompt"]): r for r in ledger_lines(out) if r["status"] == "succeeded"}


ENV = clean_env(BATCHGEN_API_KEY=SECRET)


def run_args(server: ThreadedFakeServer, manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(manifest), "--out", str(out), "--base-url", server.url, "--no-progress",
            "--no-gallery", "--backoff", "0.01", *extra]


def run_batch(server: ThreadedFakeServer, manifest: Path, out: Path, *extra: str,
              crash: str | None = None, timeout: float = 90) -> Result:
    """``run --mode batch`` against the fake with quick polls; ``crash`` names a kill point."""
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    if crash:
        env["BATCHGEN_TEST_CRASH_AT"] = crash
    return cli("run", manifest, "--out", out, "--base-url", server.url, "--mode", "batch",
               "--no-progress", "--poll-interval", "0.1", *extra, env=env, timeout=timeout)


def made_per_job(out: Path) -> collections.Counter[str]:
    """Succeeded ledger lines per job, not counting the lines that bill a service duplicate."""
    return collections.Counter(
        str(r["job_id"]) for r in ledger_lines(out)
        if r["status"] == "succeeded" and not (r.get("extra") or {}).get("duplicate")  # type: ignore[union-attr]
    )


def run_fast(server: ThreadedFakeServer, manifest: Path, out: Path, *extra: str) -> Result:
    """``run`` to the end, without the gallery page (not what these tests are about)."""
    return run_against(server, manifest, out, "--no-gallery", *extra)


def spend(out: Path) -> float:
    return round(sum(float(r["cost_usd"]) for r in ledger_lines(out)), 6)  # type: ignore[arg-type]


def status(out: Path) -> dict[str, object]:
    r = cli("status", out, "--json")
    assert r.code == 0, r.output
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def succeeded_prompts(out: Path) -> set[str]:
    return {str(r["prompt"]) for r in ledger_lines(out) if r["status"] == "succeeded"}


# The fake bills the image; the ledger also counts the prompt's and the thoughts' tokens.
TOKENS_PER_IMAGE_USD = 0.01


def matches_billing(billed_usd: float, billed_images: int, ledger_usd: float) -> bool:
    """The ledger's spend is the fake's bill, plus at most the tokens of each image."""
    return billed_usd - 1e-6 <= ledger_usd <= billed_usd + TOKENS_PER_IMAGE_USD * billed_images


def assert_billing_matches(server: ThreadedFakeServer, out: Path) -> None:
    st = server.stats
    assert matches_billing(st.billed_usd, st.billed_images, spend(out)), (st, spend(out))
    assert max(st.billed_prompts.values()) == 1, "a prompt was billed twice"
