"""Issue 19, cases 1, 7, 9 and 12: collecting a batch whose results arrive short, garbled, too
big, never ending, or not at all; and kill -9 rounds under all of it.

Every case runs the CLI as a subprocess against the fake server's Batch API over HTTP. The
network's faults are the fake's ``batch_download_script`` (a download cut cleanly half-way with
no Content-Length and no chunking, one dropped, a 503, a line garbled in transit, a stream that
never ends, one that stalls); the service's are ``batch_garbled_lines`` and
``batch_oversized_lines`` (lines written unreadable, billed all the same). Each test compares
the fake's billing with the ledger and the disk.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from batchgen.batch.status import batch_rows
from batchgen.fake import FakeConfig, ThreadedFakeServer
from batchgen.fake.answers import image_price
from tests.helpers.cli import SECRET, Result, clean_env, cli, ledger_lines, spawn, wait_for
from tests.helpers.runs import made_per_job, matches_billing, run_batch, spend, status

BATCH_S = 0.3
PRICE = image_price("gemini-3-pro-image", "1K") / 2  # one image at batch prices


@pytest.fixture
def bserver() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=BATCH_S)) as srv:
        yield srv


def manifest(tmp: Path, n: int) -> Path:
    path = tmp / "m.yaml"
    jobs = [{"prompt": f"a lighthouse {i}"} for i in range(n)]
    path.write_text(yaml.safe_dump({"provider": "google", "jobs": jobs}))
    return path


def brun(srv: ThreadedFakeServer, m: Path, out: Path, *extra: str, crash: str | None = None,
         timeout: float = 60) -> Result:
    return run_batch(srv, m, out, "--no-gallery", "--backoff", "0.01", *extra, crash=crash,
                     timeout=timeout)


def submit_and_finish(srv: ThreadedFakeServer, m: Path, out: Path) -> None:
    """One batch submitted, then finished on the service (its results written)."""
    first = brun(srv, m, out)
    assert first.code == 5, first.output
    # Wait on the service's own word, not a sleep: a loaded machine runs the fake's clock late.
    assert wait_for(lambda: all(op.get("done") for op in  # type: ignore[union-attr]
                                service(srv, "GET", "v1beta/batches")["operations"]))


made = made_per_job


def images_on_disk(out: Path) -> int:
    n = 0
    for p in (out / "images").rglob("*.png"):
        with Image.open(p) as im:
            im.load()
        n += 1
    return n


def assert_paid_once_and_kept(srv: ThreadedFakeServer, out: Path, jobs: int) -> None:
    """Every job made once, its image on disk, and every billed image in the ledger."""
    st = srv.stats
    assert len(made(out)) == jobs and set(made(out).values()) == {1}
    assert images_on_disk(out) == jobs
    dups = st.batch_duplicate_lines
    billed = st.batch_billed_by_prompt
    assert sum(billed.values()) == st.batch_billed_images == jobs + dups, "paid twice"
    billed_lines = [r for r in ledger_lines(out) if float(r["cost_usd"]) > 0]  # type: ignore[arg-type]
    assert len(billed_lines) == st.batch_billed_images
    assert matches_billing(st.batch_billed_usd, st.batch_billed_images, spend(out))


def service(srv: ThreadedFakeServer, method: str, path: str) -> dict[str, object]:
    req = urllib.request.Request(f"{srv.url}/{path}", method=method,
                                 headers={"x-goog-api-key": SECRET})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


def results_file(srv: ThreadedFakeServer) -> str:
    ops = service(srv, "GET", "v1beta/batches")["operations"]
    (op,) = ops  # type: ignore[misc]
    return str(op["metadata"]["output"]["responsesFile"])  # type: ignore[index]


def file_exists(srv: ThreadedFakeServer, name: str) -> bool:
    try:
        service(srv, "GET", f"v1beta/{name}")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
        return False
    return True


# -- case 1: a download that ends early but "cleanly" -------------------------------------------


def test_a_results_download_cut_cleanly_is_downloaded_again(bserver: ThreadedFakeServer,
                                                            tmp_path: Path) -> None:
    m = manifest(tmp_path, 20)
    out = tmp_path / "out"
    submit_and_finish(bserver, m, out)
    bserver.config.batch_download_script = ["cut", "cut"]
    res = brun(bserver, m, out, "--wait")
    assert res.code == 0, res.output
    assert bserver.config.batch_download_script == []  # both cuts were served
    assert bserver.stats.batches_created == 1, "jobs of a short file were resubmitted"
    assert_paid_once_and_kept(bserver, out, 20)
    assert "downloading the results again" in res.output
    assert bserver.stats.files_deleted == 2  # the request and results file, once read whole


def test_a_file_never_read_whole_is_kept_and_nothing_resubmitted(bserver: ThreadedFakeServer,
                                                                 tmp_path: Path) -> None:
    m = manifest(tmp_path, 20)
    out = tmp_path / "out"
    submit_and_finish(bserver, m, out)
    name = results_file(bserver)
    bserver.config.batch_download_script = ["cut"] * 6  # every try of this run
    res = brun(bserver, m, out)
    assert res.code == 5, res.output
    assert "could not be read whole after 6 downloads" in res.output
    assert "finished, results not collected yet" in res.output
    assert "running on the service" not in res.output
    assert bserver.stats.batches_created == 1
    assert file_exists(bserver, name), "deleted from the service before it was read whole"
    assert not [r for r in ledger_lines(out) if r["status"] == "failed"]
    assert batch_rows(out)[0]["phase"] == "created"  # open: its jobs still belong to it
    done = brun(bserver, m, out, "--wait")
    assert done.code == 0, done.output
    assert_paid_once_and_kept(bserver, out, 20)
    assert not file_exists(bserver, name)


def test_a_line_garbled_in_transit_is_read_again(bserver: ThreadedFakeServer,
                                                 tmp_path: Path) -> None:
    m = manifest(tmp_path, 12)
    out = tmp_path / "out"
    submit_and_finish(bserver, m, out)
    bserver.config.batch_download_script = ["garble"]
    res = brun(bserver, m, out, "--wait")
    assert res.code == 0, res.output
    assert bserver.stats.batches_created == 1
    assert_paid_once_and_kept(bserver, out, 12)


def test_a_line_unreadable_for_good_is_one_charged_failure(bserver: ThreadedFakeServer,
                                                           tmp_path: Path) -> None:
    bserver.config.batch_garbled_lines = 1
    m = manifest(tmp_path, 12)
    out = tmp_path / "out"
    res = brun(bserver, m, out, "--wait")
    assert res.code == 1, res.output
    st = bserver.stats
    assert st.batches_created == 1, "a billed, unreadable line was resubmitted"
    assert st.batch_billed_images == 12
    lines = ledger_lines(out)
    (bad,) = [r for r in lines if r["status"] == "failed"]
    assert bad["error"]["kind"] == "bad_response"  # type: ignore[index]
    assert not bad["error"]["retryable"]  # type: ignore[index]
    assert "still does not read after 6 downloads" in str(bad["error"]["message"])  # type: ignore[index]
    assert float(bad["cost_usd"]) == pytest.approx(PRICE, rel=0.2)  # type: ignore[arg-type]
    assert len(made(out)) == 11 and images_on_disk(out) == 11
    assert matches_billing(st.batch_billed_usd, 12, spend(out))
    assert "--retry-failed" in res.output
    again = brun(bserver, m, out)
    assert again.code == 1 and "nothing to do" in again.output
    assert bserver.stats.batches_created == 1


# -- case 7: results that cannot be read must not wedge the folder -------------------------------


def test_a_results_file_that_is_gone_closes_the_batch_and_counts_its_spend(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = manifest(tmp_path, 20)
    out = tmp_path / "out"
    submit_and_finish(bserver, m, out)
    service(bserver, "DELETE", f"v1beta/{results_file(bserver)}")  # or past its 48 h life
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    told = cli("cancel", out, "--base-url", bserver.url, "--yes", env=env)
    assert told.code == 0, told.output
    assert "is gone: the next run closes it" in told.output
    assert "cancelled" not in told.output  # a finished batch is not cancelled: it was billed
    res = brun(bserver, m, out, "--wait")
    assert res.code == 1, res.output  # 20 failed, not exit 4 "fix the cause"
    assert "is gone (HTTP 403" in res.output
    assert "20 results lost, charged $" in res.output
    st = bserver.stats
    assert st.batches_created == 1 and st.batch_billed_images == 20
    lines = ledger_lines(out)
    assert len(lines) == 20 and {r["status"] for r in lines} == {"failed"}
    assert {r["error"]["kind"] for r in lines} == {"bad_response"}  # type: ignore[index]
    assert spend(out) == pytest.approx(20 * PRICE, rel=0.2)  # estimated: the bill is lost too
    s = status(out)
    assert float(s["cost_usd"]) == pytest.approx(spend(out), abs=1e-3)  # type: ignore[arg-type]
    assert s["pending"] == 0 and s["failed"] == 20
    (row,) = batch_rows(out)
    assert row["phase"] == "closed" and row["lost"] == 20 and "gone" in row["note"]
    assert "gone" in cli("status", out).output
    cancel = cli("cancel", out, "--base-url", bserver.url, "--yes", env=env)
    assert cancel.code == 0 and "no running batches" in cancel.output
    # Live mode no longer skips them as "in a batch": they are failures it can retry.
    live = cli("run", m, "--out", out, "--base-url", bserver.url, "--no-progress",
               "--no-gallery", "--retry-failed", "bad_response",
               env=clean_env(BATCHGEN_API_KEY=SECRET))
    assert live.code == 0, live.output
    assert bserver.stats.billed_images == 20 and len(made(out)) == 20


def test_a_gone_file_returns_only_the_jobs_the_service_did_not_bill(
    bserver: ThreadedFakeServer, tmp_path: Path
) -> None:
    bserver.config.batch_line_error_rate = 0.4  # not billed: the service says so per line
    m = manifest(tmp_path, 20)
    out = tmp_path / "out"
    submit_and_finish(bserver, m, out)
    service(bserver, "DELETE", f"v1beta/{results_file(bserver)}")
    errors = bserver.stats.batch_line_errors
    assert 0 < errors < 20
    bserver.config.batch_line_error_rate = 0.0
    res = brun(bserver, m, out, "--wait")
    assert res.code == 1, res.output
    lost = [r for r in ledger_lines(out) if r["status"] == "failed"]
    assert len(lost) == 20 - errors
    assert bserver.stats.batches_created == 2  # the unbilled ones, submitted again
    assert len(made(out)) == errors
    assert spend(out) == pytest.approx((20 - errors) * PRICE + errors * PRICE, rel=0.2)


def test_a_line_over_the_cap_is_one_failed_job(bserver: ThreadedFakeServer,
                                              tmp_path: Path) -> None:
    bserver.config.batch_oversized_lines = 1  # 257 MiB, streamed and skipped to its newline
    m = manifest(tmp_path, 6)
    out = tmp_path / "out"
    res = brun(bserver, m, out, "--wait", timeout=120)
    assert res.code == 1, res.output
    st = bserver.stats
    assert st.batches_created == 1 and st.batch_billed_images == 6
    (bad,) = [r for r in ledger_lines(out) if r["status"] == "failed"]
    assert "over the 256 MiB cap" in str(bad["error"]["message"])  # type: ignore[index]
    assert float(bad["cost_usd"]) > 0  # type: ignore[arg-type]
    assert len(made(out)) == 5 and images_on_disk(out) == 5
    assert matches_billing(st.batch_billed_usd, 6, spend(out))


# -- case 9: --wait retries a transient fault during collection -----------------------------------


def test_wait_retries_a_dropped_download_and_a_503(bserver: ThreadedFakeServer,
                                                   tmp_path: Path) -> None:
    m = manifest(tmp_path, 10)
    out = tmp_path / "out"
    bserver.config.batch_download_script = ["drop", "503", "drop"]
    res = brun(bserver, m, out, "--wait")
    assert res.code == 0, res.output
    assert "fix the cause" not in res.output
    assert bserver.config.batch_download_script == []
    assert bserver.stats.batches_created == 1
    assert_paid_once_and_kept(bserver, out, 10)


def test_wait_goes_on_polling_through_a_run_of_503s(bserver: ThreadedFakeServer,
                                                    tmp_path: Path) -> None:
    m = manifest(tmp_path, 6)
    out = tmp_path / "out"
    submit_and_finish(bserver, m, out)
    bserver.config.batch_get_503 = 8  # past the 6 tries one poll makes
    res = brun(bserver, m, out, "--wait")
    assert res.code == 0, res.output
    assert "could not be polled" in res.output and "fix the cause" not in res.output
    assert bserver.config.batch_get_503 == 0
    assert_paid_once_and_kept(bserver, out, 6)


# -- case 12: a file that never ends; Ctrl-C while collecting --------------------------------------


def test_a_results_file_that_never_ends_is_read_to_a_bound(bserver: ThreadedFakeServer,
                                                           tmp_path: Path) -> None:
    m = manifest(tmp_path, 5)
    out = tmp_path / "out"
    submit_and_finish(bserver, m, out)
    bserver.config.batch_download_script = ["endless"]
    res = brun(bserver, m, out, "--wait", timeout=30)
    assert res.code == 0, res.output
    assert "the rest is not read" in res.output
    assert res.output.count("has an unknown key") == 3
    assert "more result lines with unknown keys" in res.output
    assert_paid_once_and_kept(bserver, out, 5)


def test_ctrl_c_while_collecting_does_not_call_the_batch_running(bserver: ThreadedFakeServer,
                                                                 tmp_path: Path) -> None:
    m = manifest(tmp_path, 6)
    out = tmp_path / "out"
    submit_and_finish(bserver, m, out)
    bserver.config.batch_download_script = ["stall"]
    proc = spawn("run", m, "--out", out, "--base-url", bserver.url, "--mode", "batch",
                 "--no-progress", "--no-gallery", "--wait", "--poll-interval", "0.1",
                 env=clean_env(BATCHGEN_API_KEY=SECRET))
    journal = out / "batches.jsonl"
    assert wait_for(lambda: b'"collecting":true' in journal.read_bytes())
    time.sleep(0.2)  # into the stalled download
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "1 batch finished, results not collected yet" in err
    assert "keep running" not in err and "running on the service" not in err
    done = brun(bserver, m, out, "--wait")
    assert done.code == 0, done.output
    assert_paid_once_and_kept(bserver, out, 6)


# -- done when: kill -9 rounds under batch faults and cut downloads -------------------------------


def test_kill_9_rounds_under_batch_faults_and_cut_downloads(bserver: ThreadedFakeServer,
                                                            tmp_path: Path) -> None:
    cfg = bserver.config
    cfg.batch_duplicate_rate = 0.3
    cfg.batch_line_error_rate = 0.15
    cfg.batch_create_503 = 1
    cfg.batch_download_script = ["cut", "drop", "ok", "garble", "cut", "503", "cut", "ok",
                                 "cut", "garble"]
    m = manifest(tmp_path, 50)
    out = tmp_path / "out"
    # --limit spreads the submissions over the rounds, so that each round has batches to
    # submit and batches to collect, and each kill point is reached.
    rounds = ["after_intent", "mid_collect:3", "after_upload", "mid_collect:2", "after_create",
              "mid_collect:4", None, "mid_collect:3", "after_upload", "mid_collect:5"]
    killed = 0
    for crash in rounds:
        res = brun(bserver, m, out, "--batch-size", "5", "--limit", "10", crash=crash)
        killed += res.code == -signal.SIGKILL
        assert res.code in (-signal.SIGKILL, 0, 5), res.output
        time.sleep(BATCH_S)
    assert killed >= 5, "the rounds did not reach their kill points"
    done = brun(bserver, m, out, "--batch-size", "10", "--wait")
    assert done.code == 0, done.output
    st = bserver.stats
    assert set(st.batches_created_by_display_name.values()) == {1}, "a display name made twice"
    assert st.batch_duplicate_lines > 0 and st.batch_line_errors > 0
    assert_paid_once_and_kept(bserver, out, 50)
    assert all(p.is_relative_to(out) for p in out.rglob("*"))
