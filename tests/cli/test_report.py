"""``batchgen report``: every figure recomputed here from the ledger lines must match."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchgen.fake import FakeConfig, Rule, ThreadedFakeServer
from tests.helpers.cli import SECRET, cli, ledger_lines, run_against, write_manifest


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)), 1) - 1]


def ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One run folder for every test here: building it takes a few seconds."""
    with ThreadedFakeServer(FakeConfig(api_key=SECRET)) as server:
        yield build_run(server, tmp_path_factory.mktemp("report"))


def build_run(server: ThreadedFakeServer, tmp_path: Path) -> Path:
    server.config.latency_s = 0.12  # spreads 24 answers over more than a second
    server.config.rules = [
        Rule(match="forbidden", fault="block"),
        Rule(match="wordy", fault="text_only"),
        Rule(match="invalid", fault="400"),
        # times counts across every prompt a rule matches: one rule per prompt.
        Rule(match="flaky one", fault="503", times=2),
        Rule(match="flaky two", fault="503", times=2),
        Rule(match="limited one", fault="429", times=1),
        Rule(match="limited two", fault="429", times=1),
    ]
    prompts = [f"a plain picture number {i}" for i in range(16)] + [
        "forbidden one", "forbidden two", "wordy one", "invalid one",
        "flaky one", "flaky two", "limited one", "limited two",
    ]
    manifest = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    assert run_against(server, manifest, out, "--concurrency", "2").code == 1
    # A second pass over the blocked jobs: two ledger lines for each of those jobs.
    assert run_against(server, manifest, out, "--retry-failed", "blocked").code == 1
    return out


def test_report_figures_match_the_ledger(run_dir: Path) -> None:
    r = cli("report", run_dir, "--json")
    assert r.code == 0, r.output
    rep: dict[str, Any] = json.loads(r.stdout)
    lines = ledger_lines(run_dir)
    latest = {str(x["job_id"]): x for x in lines}
    ok = [x for x in latest.values() if x["status"] == "succeeded"]
    bad = [x for x in latest.values() if x["status"] != "succeeded"]

    assert (rep["jobs"], rep["succeeded"], rep["failed"], rep["pending"]) == (24, 20, 4, 0)
    assert len(ok) == 20 and len(bad) == 4

    kinds = Counter(str(x["error"]["kind"]) for x in bad)  # type: ignore[index]
    assert kinds == {"blocked": 2, "no_image": 1, "invalid_request": 1}
    assert {k: v["count"] for k, v in rep["errors"].items()} == kinds
    for kind, info in rep["errors"].items():
        messages = {x["error"]["message"] for x in bad if x["error"]["kind"] == kind}  # type: ignore[index]
        assert info["example"] in messages and not info["retryable"]
        assert latest[info["example_job"]]["error"]["kind"] == kind  # type: ignore[index]

    latencies = [float(x["latency_s"]) for x in ok]  # type: ignore[arg-type]
    for p in (50, 90, 99):
        assert rep["latency_s"][f"p{p}"] == pytest.approx(nearest_rank(latencies, p), abs=1e-3)
    assert rep["latency_s"]["p50"] >= 0.12

    per_job = Counter[str]()
    for x in lines:
        per_job[str(x["job_id"])] += int(x["attempts"])  # type: ignore[call-overload]
    histogram = Counter(per_job.values())
    assert rep["attempts"]["histogram"] == {str(k): v for k, v in sorted(histogram.items())}
    assert histogram[3] == 2  # the flaky jobs: two 503s, then an image
    assert histogram[2] >= 4  # the 429'd jobs, and the blocked jobs sent twice
    assert rep["attempts"]["requests"] == sum(per_job.values())
    assert rep["attempts"]["mean"] == pytest.approx(sum(per_job.values()) / 24, abs=1e-3)

    spent = sum(float(x["cost_usd"]) for x in lines)  # type: ignore[arg-type]
    assert rep["spend"]["total_usd"] == pytest.approx(spent, abs=1e-4)
    assert rep["spend"]["per_image_usd"] == pytest.approx(spent / 20, abs=1e-4)

    times = [ts(str(x["finished_at"])) for x in ok]
    span = max(times) - min(times)
    assert span > 1.0
    thr = rep["throughput"]
    assert thr["span_s"] == pytest.approx(span, abs=1e-3)
    n = min(10, math.floor(span))
    width = span / n
    counts = [0] * n
    for t in times:
        counts[min(int((t - min(times)) / width), n - 1)] += 1
    assert [b["images"] for b in thr["buckets"]] == counts
    assert sum(counts) == 20
    for b, c in zip(thr["buckets"], counts, strict=True):
        assert b["per_min"] == pytest.approx(c / width * 60, abs=0.01)
    assert thr["images_per_min"] == pytest.approx(20 / span * 60, abs=0.01)


def test_report_text(run_dir: Path) -> None:
    r = cli("report", run_dir)
    assert r.code == 0, r.output
    text = r.stdout
    for needle in ("succeeded  20", "blocked", "prompt blocked", "p50", "p90", "p99",
                   "attempts per job", "3: 2", "per succeeded image", "images/min"):
        assert needle in text, needle
    # status still reads the same folder the same way.
    st = json.loads(cli("status", run_dir, "--json").stdout)
    assert st["succeeded"] == 20 and st["errors"] == {"blocked": 2, "invalid_request": 1,
                                                      "no_image": 1}


def test_report_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    r = cli("report", tmp_path)
    assert r.code == 2 and "not a batchgen run folder" in r.stderr
