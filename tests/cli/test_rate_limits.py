"""Rate limits through the CLI: the RPM reached without 429s, the rate adapted to 429s, daily
quotas and long delays, the first-answer gate, empty answers.

The CLI runs against the fake server and is judged from the server's timeline of arrivals
(when each request came in, and what it got), with the issue's thresholds. They are kept to a
few seconds each with small windows and high limits; bench/pacing.py runs the full table
(windows of 1 to 60 s) and bench/RESULTS.md has its figures."""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml
from PIL import Image

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import (
    SECRET,
    clean_env,
    cli,
    ledger_lines,
    run_against,
    write_manifest,
)
from tests.helpers.runs import succeeded
from tests.helpers.servers import _serve


def test_rate_limit_at_server_limit_draws_no_429(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.rpm_limit = 10
    server.config.rate_window_s = 1.0
    prompts = [f"paced {i}" for i in range(25)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    r = run_against(server, m, out, "--rpm", "10", "--rate-window", "1", "--concurrency", "8")
    assert r.code == 0, r.output
    assert set(succeeded(out)) == set(prompts)
    assert server.stats.by_status.get(429, 0) == 0
    assert server.stats.requests == 25


def test_no_limit_set_adapts_to_429s(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.rpm_limit = 10
    server.config.rate_window_s = 1.0
    prompts = [f"adaptive {i}" for i in range(25)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    r = run_against(server, m, out, "--concurrency", "8", "--max-attempts", "20")
    assert r.code == 0, r.output
    assert set(succeeded(out)) == set(prompts)
    assert server.stats.by_status.get(429, 0) > 0


def test_one_429_does_not_freeze_the_other_workers(server: ThreadedFakeServer,
                                                   tmp_path: Path) -> None:
    server.config.script = ["429"]
    server.config.retry_delay_s = 2.0
    server.config.latency_s = 0.02
    m = write_manifest(tmp_path / "m.yaml", [f"busy {i}" for i in range(30)])
    out = tmp_path / "run"
    t0 = time.time()
    r = run_against(server, m, out, "--concurrency", "8")
    assert r.code == 0, r.output
    import datetime as dt

    finished = sorted(dt.datetime.fromisoformat(str(x["finished_at"])).timestamp()
                      for x in ledger_lines(out))
    # 29 jobs finish long before the one that was told to wait 2 s.
    assert finished[-2] - t0 < finished[-1] - t0 - 1.0
    assert finished[-1] - t0 >= 2.0


def test_daily_quota_stops_cleanly(server: ThreadedFakeServer, tmp_path: Path) -> None:
    server.config.script = ["429_daily"]
    m = write_manifest(tmp_path / "m.yaml", [f"q {i}" for i in range(10)])
    r = run_against(server, m, tmp_path / "run", "--concurrency", "8")
    assert r.code == 4, r.output
    assert "resets at midnight Pacific" in r.stderr
    assert server.stats.requests == 1


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def slow_reference_host() -> Iterator[str]:
    """Serves a PNG after 0.8 s: a reference image on a slow CDN."""
    png = _png()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(0.8)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    yield from _serve(Slow)


def test_rpm_at_the_server_limit_draws_no_429_with_a_slow_reference(
    server: ThreadedFakeServer, slow_reference_host: str, tmp_path: Path
) -> None:
    server.config.rpm_limit = 2
    server.config.rate_window_s = 1.0
    jobs = [{"prompt": "first, plain"},
            {"prompt": "with a slow reference", "images": [slow_reference_host + "/ref.png"]},
            *({"prompt": f"plain {i}"} for i in range(4))]
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"jobs": jobs}))
    r = run_against(server, m, tmp_path / "run", "--rpm", "2", "--rate-window", "1",
                    "--concurrency", "4")
    assert r.code == 0, r.output
    assert server.stats.by_status.get(429, 0) == 0, server.stats.by_status


def test_a_429_asking_for_an_hour_stops_the_run_instead_of_burning_the_manifest(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.faults = {"429": 1.0}
    server.config.retry_delay_s = 3600
    m = write_manifest(tmp_path / "m.yaml", [f"p {i}" for i in range(100)])
    r = run_against(server, m, tmp_path / "run", "--concurrency", "4")
    # Today: 100 requests in half a second, exit 1, and advice to use --retry-failed.
    assert server.stats.requests <= 4, server.stats.requests
    assert r.code == 4, r.output


# -- helpers -------------------------------------------------------------------------------


def figures(
    timeline: list[tuple[float, int]], limit: int, window_s: float, *, judge_from: float
) -> tuple[float, int, int]:
    """(share of the limit reached, requests judged, refused among them), from ``judge_from``
    seconds after the first arrival."""
    t0 = timeline[0][0]
    judged = [(t, s) for t, s in timeline if t >= t0 + judge_from]
    admitted = [t for t, s in judged if s != 429]
    refused = sum(1 for _, s in judged if s == 429)
    assert len(admitted) >= 2, timeline
    if judge_from > 0:
        rate = len(admitted) / (admitted[-1] - (t0 + judge_from))
    else:
        rate = (len(admitted) - 1) / (admitted[-1] - admitted[0])
    return rate / (limit / window_s), len(judged), refused


def per_second(timeline: list[tuple[float, int]]) -> list[tuple[int, int]]:
    """(let through, refused) in each second from the first arrival: what a failure shows."""
    t0 = timeline[0][0]
    seconds = int(timeline[-1][0] - t0) + 1
    counts = [[0, 0] for _ in range(seconds)]
    for t, status in timeline:
        counts[int(t - t0)][status == 429] += 1
    return [(ok, no) for ok, no in counts]


# -- pacing over HTTP ----------------------------------------------------------------------

# The HTTP tests that judge rates run one after another on one xdist worker (`make test` runs
# `--dist loadgroup`): each loads the 2 cores as it runs, and two at once made a first cut read
# low (8 a second for 12) and the run miss 0.9 of the limit, two full runs in seven.
RATE_TESTS = pytest.mark.xdist_group("rates")


@RATE_TESTS
@pytest.mark.parametrize(
    ("limit", "window"),
    # 1 and 2 s windows fill up many times over; the 10 and 60 s ones are paced at the same
    # 12 a second (a scaled-up limit, so the test stays short): evenly enough never to exceed.
    [(12, 1.0), (24, 2.0), (120, 10.0), (720, 60.0)],
)
def test_rpm_at_the_limit_reaches_it_without_429s(
    server: ThreadedFakeServer, tmp_path: Path, limit: int, window: float
) -> None:
    server.config.rpm_limit = limit
    server.config.rate_window_s = window
    server.config.latency_s = 0.05
    jobs = 60
    m = write_manifest(tmp_path / "m.yaml", [f"paced {i}" for i in range(jobs)])
    rpm = limit * 60 / window  # the user gives the per-minute figure; the limiter's window differs
    r = run_against(server, m, tmp_path / "run", "--rpm", f"{rpm:g}", "--concurrency", "32",
                    "--max-attempts", "20")
    assert r.code == 0, r.output
    timeline = server.stats.timeline
    reached, judged, refused = figures(timeline, limit, window, judge_from=0.0)
    assert refused <= max(1, judged // 100), timeline
    assert 0.95 <= reached <= 1.02, reached


@RATE_TESTS
@pytest.mark.parametrize(
    ("latency", "limit", "window", "jobs"),
    # Long enough that one low count under a loaded suite (-n 3 on 2 cores) is a few seconds
    # of many: after the first window, 20 s at the limit (30 s at 0.05 s: there a first cut
    # read low under the suite's load, 8 a second for 12, and the 5 s the rate took to climb
    # back left 0.895 of 20 s, one full run in five).
    [(0.05, 12, 1.0, 520), (1.0, 12, 1.0, 250), (1.0, 12, 2.0, 150)],
)
def test_adaptive_rate_after_the_first_window(
    server: ThreadedFakeServer, tmp_path: Path, latency: float, limit: int, window: float,
    jobs: int,
) -> None:
    server.config.rpm_limit = limit
    server.config.rate_window_s = window
    server.config.latency_s = latency
    m = write_manifest(tmp_path / "m.yaml", [f"adaptive {i}" for i in range(jobs)])
    r = run_against(server, m, tmp_path / "run", "--concurrency", "32", "--max-attempts", "50",
                    "-v", timeout=120)
    assert r.code == 0, r.output
    timeline = server.stats.timeline
    # The first window starts when the gate lets everyone go (the probe went alone) and the
    # client hears how it went a latency later.
    judge_from = timeline[1][0] - timeline[0][0] + window + latency
    reached, judged, refused = figures(timeline, limit, window, judge_from=judge_from)
    # On a failure: each second's admitted and refused, and each cut the pacer made (-v).
    why = (per_second(timeline), [line for line in r.stderr.splitlines() if "pacing" in line])
    assert refused <= 0.10 * judged, (refused, judged, why)
    assert reached >= 0.9, (reached, why)


@RATE_TESTS
def test_adaptive_rate_with_capacity_429s_without_retry_info(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.rpm_limit = 12
    server.config.rate_window_s = 1.0
    server.config.rate_limit_style = "capacity"
    server.config.latency_s = 0.05
    m = write_manifest(tmp_path / "m.yaml", [f"busy {i}" for i in range(250)])
    r = run_against(server, m, tmp_path / "run", "--concurrency", "32", "--max-attempts", "50")
    assert r.code == 0, r.output
    timeline = server.stats.timeline
    judge_from = timeline[1][0] - timeline[0][0] + 1.05
    reached, judged, refused = figures(timeline, 12, 1.0, judge_from=judge_from)
    assert refused <= 0.10 * judged, (refused, judged)
    assert reached >= 0.9, reached


@RATE_TESTS
def test_overload_429s_at_random_do_not_slow_the_run(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    # No limiter: a fifth of all requests refused at random, with no delay named.
    server.config.faults = {"429_capacity": 0.2}
    server.config.latency_s = 0.3
    jobs, concurrency = 240, 16
    m = write_manifest(tmp_path / "m.yaml", [f"overload {i}" for i in range(jobs)])
    r = run_against(server, m, tmp_path / "run", "--concurrency", str(concurrency),
                    "--max-attempts", "50", "--backoff", "0.3", "-v", timeout=120)
    assert r.code == 0, r.output
    timeline = server.stats.timeline
    admitted = [t for t, s in timeline if s != 429]
    assert len(admitted) == jobs
    # From when the gate lets everyone go to when 90% is in (the rest is the tail of retries,
    # set by the backoff): 16 in flight allow 16 / 0.3 s, of which a fifth is refused. Read as
    # a full limiter, each of those 429s cut the rate, and the run took 8 times as long.
    t0, t90 = timeline[1][0], admitted[int(0.9 * jobs)]
    rate = sum(1 for t in admitted if t0 <= t <= t90) / (t90 - t0)
    why = (per_second(timeline), [line for line in r.stderr.splitlines() if "pacing" in line])
    assert rate >= 0.7 * 0.8 * concurrency / 0.3, (rate, why)


# -- the first-answer gate over HTTP -------------------------------------------------------


def test_wrong_key_at_concurrency_64_costs_at_most_two_requests(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.latency_s = 0.3
    m = write_manifest(tmp_path / "m.yaml", [f"p {i}" for i in range(200)])
    r = cli("run", m, "--out", tmp_path / "run", "--base-url", server.url, "--no-progress",
            "--concurrency", "64", env=clean_env(BATCHGEN_API_KEY="wrong-key"))
    assert r.code == 4, r.output
    assert server.stats.requests <= 2


def test_the_gate_lets_the_others_go_before_a_slow_probe_answers(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.latency_s = 3.0
    m = write_manifest(tmp_path / "m.yaml", [f"slow {i}" for i in range(6)])
    r = run_against(server, m, tmp_path / "run", "--concurrency", "6")
    assert r.code == 0, r.output
    arrivals = [t for t, _ in server.stats.timeline]
    gap = arrivals[1] - arrivals[0]
    # About 1 s (the release time), not the probe's whole 3-s generation.
    assert 0.8 < gap < 2.2, gap
    assert arrivals[-1] - arrivals[0] < 2.5


# -- empty answers -------------------------------------------------------------------------


def test_an_empty_answer_is_retried_and_billed_once(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    server.config.script = ["empty"]
    m = write_manifest(tmp_path / "m.yaml", ["a lighthouse"])
    out = tmp_path / "run"
    r = run_against(server, m, out)
    assert r.code == 0, r.output
    (record,) = ledger_lines(out)
    assert record["status"] == "succeeded" and record["attempts"] == 2
    assert server.stats.requests == 2
    assert server.stats.billed_images == 1
    # The ledger's spend is one image plus the empty answer's few input tokens, not two images.
    assert float(str(record["cost_usd"])) < 0.2


def test_key_is_never_in_the_timeline_endpoint(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["one"])
    assert run_against(server, m, tmp_path / "run").code == 0
    with urllib.request.urlopen(server.url + "/_fake/timeline", timeout=10) as resp:
        body = resp.read().decode()
    assert SECRET not in body
    assert len(json.loads(body)["timeline"]) == 1
