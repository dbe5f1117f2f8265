"""Batch mode end to end: the CLI as a subprocess against the fake server's Batch API over HTTP.

Crash tests stop the CLI with a real SIGKILL at a deterministic point
(``BATCHGEN_TEST_CRASH_AT``), then re-run it and check that every job is done exactly once, no
display name was created twice and no image billed twice (apart from the service's duplicates).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from batchgen.batch.status import batch_rows
from batchgen.cli.batch_cmd import estimate_side_by_side
from batchgen.fake import FakeConfig, Rule, ThreadedFakeServer
from batchgen.fake.answers import image_price
from batchgen.pricing import PriceTable
from batchgen.reporting.estimate import EstimateRequest, estimate
from batchgen.reporting.status import load_status
from batchgen.spec import JobSpec
from tests.helpers.cli import SECRET, Result, clean_env, cli, ledger_lines, spawn, wait_for
from tests.helpers.runs import made_per_job, run_batch

BATCH_S = 0.3


@pytest.fixture
def bserver() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=BATCH_S)) as srv:
        yield srv


def manifest(tmp: Path, n: int, *, refs: int = 0, prefix: str = "a lighthouse", name: str = "m",
             provider: str = "google", extra: list[str] | None = None) -> Path:
    jobs: list[dict[str, object]] = []
    for i in range(refs):
        # Noise, so a reference weighs what a photo does (~50 KB) and sending it once shows.
        Image.frombytes("RGB", (128, 128), os.urandom(128 * 128 * 3)).save(tmp / f"ref{i}.png")
    for i in range(n):
        job: dict[str, object] = {"prompt": f"{prefix} {i}"}
        if refs:
            job["images"] = [f"ref{i % refs}.png"]
        jobs.append(job)
    for p in extra or []:
        jobs.append({"prompt": p})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"provider": provider, "jobs": jobs}))
    return path


def brun(srv: ThreadedFakeServer, m: Path, out: Path, *extra: str, crash: str | None = None,
         timeout: float = 90) -> Result:
    return run_batch(srv, m, out, *extra, crash=crash, timeout=timeout)


succeeded = made_per_job


def assert_each_once(srv: ThreadedFakeServer, out: Path, jobs: int) -> None:
    st = srv.stats
    assert len(succeeded(out)) == jobs
    assert set(succeeded(out).values()) == {1}, "a job recorded as made twice"
    assert set(st.batches_created_by_display_name.values()) == {1}, "a display name made twice"
    assert set(st.batch_billed_by_prompt.values()) == {1}, "an image billed twice"
    assert st.batch_billed_images == jobs
    images = [p for p in (out / "images").rglob("*.png")]
    assert len(images) == jobs


def test_300_jobs_with_references_at_half_the_live_price(bserver: ThreadedFakeServer,
                                                         tmp_path: Path) -> None:
    m = manifest(tmp_path, 300, refs=3)
    out = tmp_path / "batch"
    first = brun(bserver, m, out, "--batch-size", "100")
    assert first.code == 5, first.output
    assert "submitted 300 jobs in 3 batches, estimated $" in first.output
    assert "re-run this command to collect" in first.output
    second = brun(bserver, m, out, "--wait")
    assert second.code == 0, second.output
    assert_each_once(bserver, out, 300)

    lines = ledger_lines(out)
    assert {r["mode"] for r in lines} == {"batch"}
    assert len({r["batch"] for r in lines}) == 3
    for r in lines[:20]:
        img = out / str(r["outputs"][0])  # type: ignore[index]
        with Image.open(img) as im:
            im.load()
            assert im.size == (r["width"], r["height"])
        sidecar = json.loads(img.with_suffix(".json").read_text())
        assert sidecar["job_id"] == r["job_id"] and sidecar["batch"] == r["batch"]

    # Each distinct reference went up once, not once per line.
    st = bserver.stats
    assert st.files_uploaded == 3 + 3  # three references, three request files
    ref_bytes = [(tmp_path / f"ref{i}.png").stat().st_size for i in range(3)]
    # Inline, each line would carry its reference: 300 x ~65 KB of base64. Uploaded once each,
    # the references plus 300 short lines naming them.
    assert st.bytes_uploaded < sum(ref_bytes) + 300 * 1024
    assert st.files_deleted == 6  # request and results file of each batch

    # Half the live price: the same answers priced at the live table cost twice as much
    # (the live path bills from the same usageMetadata, see test_run / test_budget), and the
    # fake billed each image at half its live list price.
    live_table = PriceTable.load()
    live_cost = sum(live_table.from_usage(JobSpec(job_id=str(r["job_id"]), prompt=str(r["prompt"])),
                                          r["usage"]) for r in lines)  # type: ignore[arg-type]
    batch_cost = sum(float(r["cost_usd"]) for r in lines)  # type: ignore[arg-type]
    assert batch_cost == pytest.approx(live_cost / 2, rel=1e-3)
    assert all(int(r["usage"]["promptTokenCount"]) > 560 for r in lines)  # type: ignore[index]
    assert st.batch_billed_usd == pytest.approx(300 * image_price("gemini-3-pro-image", "1K") / 2)

    # A ledger line looks as live mode writes one: the same fields, plus which batch made it.
    (tmp_path / "small").mkdir()
    small = manifest(tmp_path / "small", 2, refs=1)
    live = cli("run", small, "--out", tmp_path / "live", "--base-url", bserver.url, "--no-progress",
               "--provider", "google", env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert live.code == 0, live.output
    live_line = ledger_lines(tmp_path / "live")[0]
    assert live_line["mode"] == "live"
    assert set(lines[0]) - {"batch", "extra"} == set(live_line) - {"extra"}
    assert lines[0]["references"][0]["sha256"]  # type: ignore[index]

    status = cli("status", out, "--json")
    data = json.loads(status.stdout)
    assert data["succeeded"] == 300 and data["pending"] == 0
    assert [b["jobs"] for b in data["batches"]] == [100, 100, 100]
    assert {b["state"] for b in data["batches"]} == {"BATCH_STATE_SUCCEEDED"}
    assert cli("report", out).code == 0
    assert cli("gallery", out).code == 0
    # Finished: a third run sends nothing.
    again = brun(bserver, m, out)
    assert again.code == 0 and "nothing to do" in again.output
    assert bserver.stats.batches_created == 3


@pytest.mark.parametrize(
    "point", ["after_intent", "after_upload", "after_create"]
)
def test_kill_9_while_submitting_never_submits_twice(bserver: ThreadedFakeServer, tmp_path: Path,
                                                    point: str) -> None:
    m = manifest(tmp_path, 20, refs=2)
    out = tmp_path / "out"
    killed = brun(bserver, m, out, "--batch-size", "8", crash=point)
    assert killed.code == -signal.SIGKILL, killed.output
    done = brun(bserver, m, out, "--batch-size", "8", "--wait")
    assert done.code == 0, done.output
    assert_each_once(bserver, out, 20)
    assert bserver.stats.batches_created == 3


def test_kill_9_in_the_middle_of_collecting(bserver: ThreadedFakeServer, tmp_path: Path) -> None:
    m = manifest(tmp_path, 20)
    out = tmp_path / "out"
    assert brun(bserver, m, out).code == 5
    time.sleep(BATCH_S * 2)
    killed = brun(bserver, m, out, crash="mid_collect:7")
    assert killed.code == -signal.SIGKILL
    assert len(succeeded(out)) <= 7  # saves in flight may be on disk but not in the ledger
    done = brun(bserver, m, out, "--wait")
    assert done.code == 0, done.output
    assert_each_once(bserver, out, 20)


def test_create_answered_503_but_done_is_not_submitted_twice(bserver: ThreadedFakeServer,
                                                            tmp_path: Path) -> None:
    bserver.config.batch_create_503 = 2
    m = manifest(tmp_path, 12)
    out = tmp_path / "out"
    res = brun(bserver, m, out, "--batch-size", "5", "--wait")
    assert res.code == 0, res.output
    assert_each_once(bserver, out, 12)
    assert bserver.stats.batches_created == 3


def test_expired_batch_is_resubmitted(bserver: ThreadedFakeServer, tmp_path: Path) -> None:
    bserver.config.batch_expire = True
    m = manifest(tmp_path, 6)
    out = tmp_path / "out"
    assert brun(bserver, m, out).code == 5
    bserver.config.batch_expire = False  # read at create: only the first batch expires
    res = brun(bserver, m, out, "--wait")
    assert res.code == 0, res.output
    assert "EXPIRED" in res.output
    assert_each_once(bserver, out, 6)
    assert bserver.stats.batches_created == 2
    states = [b["state"] for b in batch_rows(out)]
    assert states == ["BATCH_STATE_EXPIRED", "BATCH_STATE_SUCCEEDED"]


def test_retryable_lines_resubmitted_permanent_lines_recorded_once(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    bserver.config.batch_line_error_rate = 0.3
    bserver.config.rules = [Rule(match="forbidden", fault="block")]
    m = manifest(tmp_path, 15, extra=["a forbidden thing"])
    out = tmp_path / "out"
    res = brun(bserver, m, out, "--wait")
    assert res.code == 1, res.output
    lines = ledger_lines(out)
    retried = [r for r in lines if r["status"] == "failed" and r["error"]["retryable"]]  # type: ignore[index]
    assert retried, "the fake sent no retryable lines"
    assert len(succeeded(out)) == 15
    blocked = [r for r in lines if r["prompt"] == "a forbidden thing"]
    assert len(blocked) == 1 and blocked[0]["error"]["kind"] == "blocked"  # type: ignore[index]
    assert bserver.stats.batches_created >= 2
    created = bserver.stats.batches_created
    again = brun(bserver, m, out)
    assert again.code == 1 and "nothing to do" in again.output
    assert bserver.stats.batches_created == created


def test_duplicate_results_are_kept_once_and_billed(bserver: ThreadedFakeServer,
                                                    tmp_path: Path) -> None:
    bserver.config.batch_duplicate_rate = 0.5
    m = manifest(tmp_path, 16)
    out = tmp_path / "out"
    assert brun(bserver, m, out, "--wait").code == 0
    lines = ledger_lines(out)
    dups = [r for r in lines if (r.get("extra") or {}).get("duplicate")]  # type: ignore[union-attr]
    st = bserver.stats
    assert st.batch_duplicate_lines > 0
    assert len(dups) == st.batch_duplicate_lines
    assert len(succeeded(out)) == 16 and set(succeeded(out).values()) == {1}
    # The ledger's spend counts every billed line; each line's last record still names the image.
    assert sum(1 for r in lines if float(r["cost_usd"]) > 0) == st.batch_billed_images  # type: ignore[arg-type]
    assert load_status(out).succeeded == 16


def test_budget_cuts_a_batch_down_and_nothing_fitting_exits_3(bserver: ThreadedFakeServer,
                                                              tmp_path: Path) -> None:
    m = manifest(tmp_path, 10)
    out = tmp_path / "out"
    none = brun(bserver, m, out, "--budget", "0.01")
    assert none.code == 3, none.output
    assert bserver.stats.batches_created == 0
    res = brun(bserver, m, out, "--budget", "0.45")  # 2 jobs: worst case + 100% duplicate margin
    assert res.code == 5, res.output
    batch = batch_rows(out)
    assert len(batch) == 1 and 0 < batch[0]["jobs"] < 10
    done = brun(bserver, m, out, "--budget", "0.45", "--wait")
    assert done.code == 3, done.output
    spent = sum(float(r["cost_usd"]) for r in ledger_lines(out))  # type: ignore[arg-type]
    assert spent <= 0.45
    assert 0 < len(succeeded(out)) < 10


def test_cancel_returns_jobs_to_pending(bserver: ThreadedFakeServer, tmp_path: Path) -> None:
    bserver.config.batch_seconds = 60
    m = manifest(tmp_path, 6)
    out = tmp_path / "out"
    assert brun(bserver, m, out).code == 5
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    asks = cli("cancel", out, "--base-url", bserver.url, env=env)
    assert asks.code == 2 and "--yes" in asks.output
    res = cli("cancel", out, "--base-url", bserver.url, "--yes", env=env)
    assert res.code == 0, res.output
    assert "6 jobs are pending again" in res.output
    assert batch_rows(out)[0]["state"] == "BATCH_STATE_CANCELLED"
    assert load_status(out).pending == 6
    bserver.config.batch_seconds = BATCH_S
    done = brun(bserver, m, out, "--wait")
    assert done.code == 0, done.output
    assert len(succeeded(out)) == 6
    assert bserver.stats.batches_created == 2


def test_live_run_skips_jobs_in_a_running_batch(bserver: ThreadedFakeServer,
                                                tmp_path: Path) -> None:
    bserver.config.batch_seconds = 60
    m = manifest(tmp_path, 4)
    out = tmp_path / "out"
    assert brun(bserver, m, out).code == 5
    live = cli("run", m, "--out", out, "--base-url", bserver.url, "--no-progress",
               env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert live.code == 0, live.output
    assert "4 jobs sit in running batches" in live.output
    assert bserver.stats.requests == 0
    again = brun(bserver, m, out)  # still running: nothing new is put in another batch
    assert again.code == 5
    assert bserver.stats.batches_created == 1


def test_batch_mode_needs_google_and_sends_nothing_otherwise(bserver: ThreadedFakeServer,
                                                             tmp_path: Path) -> None:
    m = manifest(tmp_path, 3, provider="anyfast")
    out = tmp_path / "out"
    res = brun(bserver, m, out)
    assert res.code == 2
    assert "google" in res.output
    assert not out.exists()
    assert bserver.stats.batches_created == 0 and bserver.stats.files_uploaded == 0


def test_ctrl_c_stops_waiting_and_the_batch_keeps_running(bserver: ThreadedFakeServer,
                                                          tmp_path: Path) -> None:
    bserver.config.batch_seconds = 60
    m = manifest(tmp_path, 3)
    out = tmp_path / "out"
    proc = spawn("run", m, "--out", out, "--base-url", bserver.url, "--mode", "batch",
                 "--no-progress", "--wait", "--poll-interval", "0.1",
                 env=clean_env(BATCHGEN_API_KEY=SECRET))
    journal = out / "batches.jsonl"
    assert wait_for(lambda: journal.exists() and b'"created"' in journal.read_bytes())
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "keep running" in err
    batch = batch_rows(out)[0]
    assert batch["state"] == "BATCH_STATE_PENDING" or batch["state"] == "BATCH_STATE_RUNNING"


def test_batches_split_by_file_size(bserver: ThreadedFakeServer, tmp_path: Path) -> None:
    m = manifest(tmp_path, 10)
    out = tmp_path / "out"
    res = brun(bserver, m, out, "--max-file-bytes", "1024", "--wait")
    assert res.code == 0, res.output
    batches = batch_rows(out)
    assert len(batches) >= 2 and sum(b["jobs"] for b in batches) == 10
    journal = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
    sizes = [ev["request_bytes"] for ev in journal if "request_bytes" in ev]
    assert len(sizes) == len(batches) and max(sizes) <= 1024
    assert_each_once(bserver, out, 10)


def test_estimate_shows_live_and_batch_side_by_side(tmp_path: Path) -> None:
    m = manifest(tmp_path, 10, refs=1)
    text = cli("estimate", m, "--mode", "batch").stdout
    rows = [line.split() for line in text.splitlines() if line.lstrip().startswith("total")]
    live, flex, batch = rows[-1][-3:]  # the side-by-side table's total: standard, flex, batch
    assert float(batch.lstrip("$")) == pytest.approx(float(live.lstrip("$")) / 2, abs=0.01)
    assert float(flex.lstrip("$")) == pytest.approx(float(live.lstrip("$")) / 2, abs=0.01)
    est = estimate(EstimateRequest(manifest=m, out=tmp_path / "none"))
    _, data = estimate_side_by_side(est, None)
    assert data["batch_cost_usd"] == pytest.approx(data["live_cost_usd"] / 2, rel=1e-3)
    assert data["flex_cost_usd"] == pytest.approx(data["live_cost_usd"] / 2, rel=1e-3)


def test_fake_flag_runs_batch_mode_with_wait_only(tmp_path: Path) -> None:
    m = manifest(tmp_path, 3)
    refused = cli("run", m, "--out", tmp_path / "no", "--fake", "--mode", "batch", "--no-progress")
    assert refused.code == 2 and "--wait" in refused.output
    assert not (tmp_path / "no").exists()
    out = tmp_path / "out"
    res = cli("run", m, "--out", out, "--fake", "--mode", "batch", "--wait", "--poll-interval",
              "0.2", "--no-progress")
    assert res.code == 0, res.output
    assert len(succeeded(out)) == 3


def test_lines_that_always_fail_stop_after_max_attempts(bserver: ThreadedFakeServer,
                                                        tmp_path: Path) -> None:
    bserver.config.batch_line_error_rate = 1.0
    m = manifest(tmp_path, 4)
    out = tmp_path / "out"
    res = brun(bserver, m, out, "--wait", "--max-attempts", "2")
    assert res.code == 1, res.output
    per_job = collections.Counter(str(r["job_id"]) for r in ledger_lines(out))
    assert sorted(per_job.values()) == [2, 2, 2, 2]
    assert bserver.stats.batches_created == 2


def test_the_key_never_reaches_the_folder_or_the_output(bserver: ThreadedFakeServer,
                                                       tmp_path: Path) -> None:
    # Error paths too: a create answered 503, retryable lines, a blocked line, and -v logging.
    bserver.config.batch_create_503 = 1
    bserver.config.batch_line_error_rate = 0.3
    bserver.config.rules = [Rule(match="lighthouse 2", fault="block")]
    m = manifest(tmp_path, 6, refs=1)
    out = tmp_path / "out"
    res = brun(bserver, m, out, "--wait", "-v")
    assert res.code in (0, 1), res.output
    assert len(succeeded(out)) == 5
    assert SECRET not in res.output
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    status = cli("status", out, "--json")
    assert SECRET not in status.output


def test_batch_mode_keeps_one_folder_one_manifest(bserver: ThreadedFakeServer,
                                                  tmp_path: Path) -> None:
    """Issue 19, 6: batch mode wrote no manifest path, so a second manifest ran into the
    folder and made the first one's paid images "superseded"."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = manifest(tmp_path / "a", 3, prefix="first manifest")
    second = manifest(tmp_path / "b", 3, prefix="second manifest")
    out = tmp_path / "out"
    assert brun(bserver, first, out, "--wait").code == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["manifest_path"] and meta["manifest_sha256"]
    requests = bserver.stats.requests
    for mode in ("batch", "live"):
        r = cli("run", second, "--out", out, "--base-url", bserver.url, "--mode", mode,
                "--no-progress", env=clean_env(BATCHGEN_API_KEY=SECRET))
        assert r.code == 2, r.output
        assert "belongs to another manifest" in r.stderr, r.output
    assert bserver.stats.requests == requests
    assert len(succeeded(out)) == 3
    st = cli("status", out, "--json")
    assert json.loads(st.stdout)["succeeded"] == 3, st.output
