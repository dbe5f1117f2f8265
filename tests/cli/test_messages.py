"""What a new user tripped over (issue 11), each through the CLI against the fake server; and the
confirmation and progress bar on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from batchgen.fake import FakeConfig, Rule, ThreadedFakeServer
from tests.helpers.cli import (
    SECRET,
    clean_env,
    cli,
    kill_group,
    ledger_lines,
    run_against,
    spawn,
    wait_for,
    write_manifest,
)
from tests.helpers.images import make_image


def _pty_run(args: list[str], env: dict[str, str], answer: bytes | None,
             timeout: float = 30) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "batchgen", *args], stdin=slave,
                            stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    answered = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
            if answer is not None and not answered and b"Go ahead?" in b"".join(chunks):
                os.write(master, answer)
                answered = True
        elif proc.poll() is not None:
            break
    proc.wait(5)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_confirmation_and_progress_bar_on_a_terminal(server: ThreadedFakeServer,
                                                     tmp_path: Path) -> None:
    server.config.latency_s = 0.05
    m = write_manifest(tmp_path / "m.yaml", [f"tty {i}" for i in range(12)])
    out = tmp_path / "run"
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    args = ["run", str(m), "--out", str(out), "--base-url", server.url, "--confirm-above", "0.5"]
    code, text = _pty_run(args, env, b"n\n")
    assert "estimated at $1.6" in text
    # Declining is a choice, not a failure: exit 0, nothing sent.
    assert code == 0 and "not started: nothing was sent" in text
    assert server.stats.requests == 0
    code, text = _pty_run(args, env, b"y\n")
    assert code == 0, text
    assert "img/min" in text and "ok=12" in text and "$1.6" in text
    assert SECRET not in text
    # --yes skips the question.
    code, text = _pty_run([*args, "--yes", "--retry-failed"], env, None)
    assert "Go ahead?" not in text


def status_json(out: Path) -> dict[str, object]:
    r = cli("status", out, "--json")
    assert r.code == 0, r.output
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def gallery_records(page: Path) -> list[dict[str, object]]:
    text = page.read_text()
    blob = text.split('<script type="application/json" id="data">', 1)[1].split("</script>")[0]
    return json.loads(blob)  # type: ignore[no-any-return]


# -- 1. a run folder belongs to one manifest ---------------------------------------------------


def test_a_second_manifest_with_the_same_name_is_refused(server: ThreadedFakeServer,
                                                         tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    train = write_manifest(tmp_path / "train" / "prompts.yaml", ["train a", "train b"])
    val = write_manifest(tmp_path / "val" / "prompts.yaml", ["val a"])
    env = clean_env(BATCHGEN_API_KEY=SECRET)
    common = ("--base-url", server.url, "--no-progress")
    # Both default to jobs/prompts (relative to where batchgen runs).
    r = cli("run", train, *common, env=env, cwd=tmp_path)
    assert r.code == 0, r.output
    requests = server.stats.requests
    r = cli("run", val, *common, env=env, cwd=tmp_path)
    assert r.code == 2, r.output
    line = r.stderr.strip().splitlines()[-1]
    assert "belongs to another manifest" in line
    assert str((tmp_path / "train" / "prompts.yaml").resolve()) in line and str(val) in line
    assert "--out jobs/val-prompts" in line
    assert server.stats.requests == requests
    r = cli("estimate", val, env=env, cwd=tmp_path)
    assert r.code == 2 and "belongs to another manifest" in r.stderr
    # The folder is matched by the manifest's path: editing the manifest is what resuming is for.
    write_manifest(tmp_path / "train" / "prompts.yaml", ["train a", "train b", "train c"])
    r = cli("run", train, *common, env=env, cwd=tmp_path)
    assert r.code == 0, r.output
    assert status_json(tmp_path / "jobs" / "prompts")["jobs"] == 3
    # --out gives the other manifest its own folder.
    r = cli("run", val, *common, "--out", "jobs/val-prompts", env=env, cwd=tmp_path)
    assert r.code == 0, r.output


# -- 2. current and superseded -----------------------------------------------------------------


def test_an_edited_row_is_superseded_in_status_report_gallery_and_prune(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    m = tmp_path / "birds.yaml"
    rows = ["a robin", "a crow", "a swan", "an owl", "a heron"]
    write_manifest(m, rows)
    out = tmp_path / "run"
    assert run_against(server, m, out).code == 0
    old = next(x for x in ledger_lines(out) if x["prompt"] == "a robin")
    old_id, rel = str(old["job_id"]), str(old["outputs"][0])  # type: ignore[index]
    write_manifest(m, ["a blue jay", *rows[1:]])
    r = run_against(server, m, out)
    assert r.code == 0, r.output
    assert "1 new or changed" in r.stderr
    st = status_json(out)
    assert (st["jobs"], st["succeeded"], st["pending"], st["superseded"]) == (5, 5, 0, 1)
    text = cli("status", out).stdout
    assert re.search(r"succeeded\s+5", text) and re.search(r"superseded 1\b", text)
    rep = json.loads(cli("report", out, "--json").stdout)
    assert rep["succeeded"] == 5 and rep["superseded"] == 1
    page = out / "gallery.html"
    records = gallery_records(page)
    marked = {str(x["id"]) for x in records if x.get("old")}
    assert marked == {old_id}
    # The cards follow the manifest, the superseded one last.
    assert [x["p"] for x in records] == ["a blue jay", *rows[1:], "a robin"]
    assert "1 superseded (edited or removed rows)" in page.read_text()
    # prune: asks first; without a terminal it needs --yes and moves nothing.
    image = out / rel
    sidecar = image.with_name(f"{old_id}.json")
    assert image.exists() and sidecar.exists()
    r = cli("prune", out)
    assert r.code == 2 and "--yes" in r.stderr
    assert image.exists()
    r = cli("prune", out, "--yes")
    assert r.code == 0, r.output
    assert not image.exists() and not sidecar.exists()
    assert (out / "superseded" / rel).exists()
    assert (out / "superseded" / rel).with_name(f"{old_id}.json").exists()
    assert len(list((out / "images").rglob("*.png"))) == 5
    assert cli("prune", out, "--yes").stdout.startswith(f"{out}: nothing superseded")
    # The ledger keeps the record; the gallery finds the image where prune put it.
    assert cli("gallery", out).code == 0
    moved = next(x for x in gallery_records(page) if x["id"] == old_id)
    assert moved.get("old") and "superseded/images" in str(moved["im"])
    # Undo the edit: the robin is current again, its image goes back, nothing is sent.
    requests = server.stats.requests
    write_manifest(m, rows)
    r = run_against(server, m, out)
    assert r.code == 0, r.output
    assert server.stats.requests == requests
    assert image.exists() and sidecar.exists()
    assert "missing" not in r.stderr  # restored before the plan's counts were final
    st = status_json(out)
    assert (st["succeeded"], st["missing"], st["superseded"]) == (5, 0, 1)  # now the blue jay


def test_current_jobs_are_recorded_at_planning(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["one", "two"], count=2)
    out = tmp_path / "run"
    r = run_against(server, m, out, "--limit", "1")
    assert r.code == 0, r.output
    lines = [json.loads(x) for x in (out / "jobs.jsonl").read_text().splitlines()]
    # Every job the manifest holds, not just the one --limit ran.
    assert len(lines) == 4 and len({x["job_id"] for x in lines}) == 4
    ledger = {str(x["job_id"]) for x in ledger_lines(out)}
    assert len(ledger) == 1 and ledger <= {x["job_id"] for x in lines}


# -- 3. status after kill -9 -------------------------------------------------------------------


def test_status_tells_a_killed_run_from_a_running_one(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=30)) as srv:
        m = write_manifest(tmp_path / "m.yaml", ["slow one", "slow two"])
        out = tmp_path / "run"
        proc = spawn("run", m, "--out", out, "--base-url", srv.url, "--no-progress",
                     env=clean_env(BATCHGEN_API_KEY=SECRET))
        try:
            assert wait_for(lambda: srv.stats.requests >= 1, timeout=30)
            assert "(last run: running)" in cli("status", out).stdout
        finally:
            kill_group(proc, signal.SIGKILL)
            proc.wait(10)
    text = cli("status", out).stdout
    assert "running)" not in text
    assert "ended without finishing" in text
    rep = json.loads(cli("report", out, "--json").stdout)
    assert rep["state"] == "ended without finishing (killed or crashed); run it again to resume"


# -- 4, 5, 6. --only, spend, --limit -----------------------------------------------------------


def test_only_that_matches_no_pending_job_exits_2(server: ThreadedFakeServer,
                                                   tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a", "b", "c"])
    out = tmp_path / "run"
    r = run_against(server, m, out, "--only", "nomatch-*")
    assert r.code == 2, r.output
    assert "--only 'nomatch-*' matched no pending job (3 jobs pending without it)" in r.stderr
    assert "every job is done" not in r.stderr
    assert server.stats.requests == 0


def test_limit_then_resume_says_what_is_pending_and_spent(server: ThreadedFakeServer,
                                                           tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"p {i}" for i in range(4)])
    out = tmp_path / "run"
    r = run_against(server, m, out, "--limit", "1", "--concurrency", "3")
    assert r.code == 0, r.output
    pending = [x for x in r.stderr.splitlines() if "still pending" in x]
    assert len(pending) == 1 and pending[0].startswith("3 jobs still pending")
    command = pending[0].split("to run them: ", 1)[1]
    assert "--limit" not in command and "--concurrency 3" in command and str(m) in command
    first = re.search(r"spent this run \$(\d+\.\d\d), folder \$(\d+\.\d\d)", r.stderr)
    assert first and first.group(1) == first.group(2)
    r = run_against(server, m, out)
    assert r.code == 0, r.output
    assert "resuming: 1 done, 3 not run yet, 0 failed and skipped, 3 to run" in r.stderr
    assert "new or changed" not in r.stderr
    spent = re.search(r"spent this run \$(\d+\.\d\d), folder \$(\d+\.\d\d)", r.stderr)
    assert spent, r.stderr
    this_run, folder = float(spent.group(1)), float(spent.group(2))
    assert this_run > 0 and abs(folder - this_run - float(first.group(2))) < 0.015


# -- 7, 9. --retry-failed kinds, commands built once --------------------------------------------


def test_retry_failed_kinds_are_validated(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a"])
    r = run_against(server, m, tmp_path / "run", "--retry-failed", "blokced")
    assert r.code == 2
    assert "'blokced' is not a kind of permanent failure (did you mean blocked?)" in r.stderr
    assert "blocked, no_image, invalid_request, reference, bad_response" in r.stderr
    assert server.stats.requests == 0
    helptext = " ".join(cli("run", "--help").stdout.split())
    assert "blocked, no_image, invalid_request, reference, bad_response" in helptext
    assert cli("estimate", m, "--retry-failed", "no-image").code == 2


def test_suggested_commands_repeat_no_flag(tmp_path: Path) -> None:
    config = FakeConfig(api_key=SECRET, rules=[Rule("blockme", "block")])
    with ThreadedFakeServer(config) as srv:
        m = write_manifest(tmp_path / "m.yaml", ["fine", "blockme please"])
        out = tmp_path / "run"
        r = run_against(srv, m, out, "--retry-failed", "--concurrency", "2")
        assert r.code == 1, r.output
        line = next(x for x in r.stderr.splitlines() if x.startswith("to retry the permanent"))
        assert line.count("--retry-failed") == 1 and line.count("--concurrency 2") == 1
        assert line.count("--no-progress") == 1
        r = run_against(srv, m, out, "--retry-failed", "blocked", "--limit", "5")
        line = next(x for x in r.stderr.splitlines() if x.startswith("to retry the permanent"))
        # Given in place of "blocked": all permanent failures, once, and no --limit.
        assert line.count("--retry-failed") == 1 and "blocked" not in line
        assert "--limit" not in line


# -- 8. budget ----------------------------------------------------------------------------------


def test_budget_is_checked_against_the_folder_first(server: ThreadedFakeServer,
                                                    tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"b {i}" for i in range(10)])
    out = tmp_path / "run"
    r = run_against(server, m, out, "--limit", "4")
    assert r.code == 0, r.output
    requests = server.stats.requests
    r = run_against(server, m, out, "--budget", "0.30")
    assert r.code == 3, r.output
    assert r.stderr.startswith("budget reached before starting: this folder has already spent $0.5")
    assert "estimated" not in r.stderr.split("budget reached")[0]
    assert "done:" not in r.stderr and server.stats.requests == requests
    suggested = float(r.stderr.split("--budget ")[-1].split()[0])
    assert suggested > 0.30
    # That budget is enough to finish.
    r = run_against(server, m, out, "--budget", str(suggested))
    assert r.code == 0, r.output


def test_budget_warns_up_front_and_suggests_a_larger_one(server: ThreadedFakeServer,
                                                         tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", [f"w {i}" for i in range(8)])
    out = tmp_path / "run"
    r = run_against(server, m, out, "--budget", "0.60", "--concurrency", "1")
    assert r.code == 3, r.output
    assert "warning: the budget covers about 4 of 8 images" in r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("budget reached"))
    suggested = float(line.split("--budget ")[-1].split()[0])
    assert suggested > 0.60 and line.count("--budget") == 2  # "raise --budget: ... --budget X"
    r = run_against(server, m, out, "--budget", str(suggested))
    assert r.code == 0, r.output


# -- 10. a key for the other provider ----------------------------------------------------------


def test_a_key_for_the_other_provider_is_named(server: ThreadedFakeServer,
                                               tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("prompt\na csv row\n")
    r = cli("run", m, "--out", tmp_path / "run", env=clean_env(GEMINI_API_KEY=SECRET))
    assert r.code == 2
    assert "no API key for provider anyfast" in r.stderr
    assert "GEMINI_API_KEY is set, which is a key for provider google" in r.stderr
    assert "--provider google" in r.stderr
    # A CSV manifest picks its provider with the flag, or with BATCHGEN_PROVIDER.
    r = cli("run", m, "--out", tmp_path / "run", "--base-url", server.url, "--no-progress",
            env=clean_env(GEMINI_API_KEY=SECRET, BATCHGEN_PROVIDER="google"))
    assert r.code == 0, r.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["provider"] == "google"


# -- 11. an unreachable reference --------------------------------------------------------------


def test_an_unreachable_url_reference_is_named(server: ThreadedFakeServer,
                                               tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text('jobs:\n  - prompt: needs a ref\n    images: ["http://127.0.0.1:9/ref.png"]\n')
    out = tmp_path / "run"
    started = time.monotonic()
    r = run_against(server, m, out)
    assert r.code == 1, r.output
    assert time.monotonic() - started < 30  # not retried for half a minute
    (rec,) = ledger_lines(out)
    error = rec["error"]
    assert isinstance(error, dict)
    assert error["kind"] == "reference" and not error["retryable"]
    # Named as the reference, where the manifest gives it, not as an API connection error.
    assert "images: reference http://127.0.0.1:9/ref.png: " in error["message"]
    assert server.stats.requests == 0


# -- 13. small things --------------------------------------------------------------------------


def test_fake_server_faults_are_checked() -> None:
    r = cli("fake-server", "--fault", "blah=0.1")
    assert r.code == 2 and "Traceback" not in r.output and "unknown fault 'blah'" in r.stderr
    r = cli("fake-server", "--fault", "429=2")
    assert r.code == 2 and "from 0 to 1" in r.stderr


def test_a_bad_key_prints_no_empty_summary_or_gallery(server: ThreadedFakeServer,
                                                      tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a", "b"])
    out = tmp_path / "run"
    r = cli("run", m, "--out", out, "--base-url", server.url, "--no-progress",
            env=clean_env(BATCHGEN_API_KEY="wrong-key"))
    assert r.code == 4, r.output
    assert "done: 0 succeeded" not in r.stderr and "(auth" not in r.stderr
    assert "stopped:" in r.stderr
    assert not (out / "gallery.html").exists()


def test_status_of_a_manifest_points_at_its_run_folder(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a"])
    for command in ("status", "report", "gallery"):
        r = cli(command, m)
        assert r.code == 2
        assert "is a file (a manifest?), not a run folder; its run folder is jobs/m" in r.stderr


def test_counts_are_singular_and_estimate_names_the_kinds(server: ThreadedFakeServer,
                                                          tmp_path: Path) -> None:
    config = FakeConfig(api_key=SECRET, rules=[Rule("nope", "block"), Rule("txt", "text_only")])
    with ThreadedFakeServer(config) as srv:
        m = write_manifest(tmp_path / "m.yaml", ["nope", "txt"])
        out = tmp_path / "run"
        assert run_against(srv, m, out).code == 1
    r = cli("estimate", m, "--out", out, "--retry-failed", "blocked")
    assert r.code == 0, r.output
    assert "1 job, 1 image to run of 2" in r.stdout
    assert "1 failed and skipped (other kinds than --retry-failed names)" in r.stdout
    assert "(--retry-failed to include)" in cli("estimate", m, "--out", out).stdout
    one = write_manifest(tmp_path / "one.yaml", ["just one"])
    assert ": ok: 1 job, 1 image (1 x 1K)" in cli("validate", one).stdout


def test_gallery_keeps_sizes_whole_and_samples_in_order(server: ThreadedFakeServer,
                                                        tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["sampled"], count=4)
    out = tmp_path / "run"
    r = run_against(server, m, out, "--concurrency", "4")
    assert r.code == 0, r.output
    order = [json.loads(x)["job_id"] for x in (out / "jobs.jsonl").read_text().splitlines()]
    page = out / "gallery.html"
    assert [x["id"] for x in gallery_records(page)] == order
    text = page.read_text()
    assert "break-all" not in text and "\\u00a0·\\u00a0" in text


def test_ledger_records_the_ratio_taken_from_the_reference(server: ThreadedFakeServer,
                                                           tmp_path: Path) -> None:
    make_image(tmp_path / "wide.png", size=(64, 36))
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n  - prompt: like this\n    images: [wide.png]\n")
    out = tmp_path / "run"
    assert run_against(server, m, out).code == 0
    (rec,) = ledger_lines(out)
    assert rec["aspect_ratio"] == "16:9"


# -- 14, 15. unattended logs and -v ------------------------------------------------------------


def test_unattended_runs_log_progress_lines_and_stops(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.15)) as srv:
        m = write_manifest(tmp_path / "m.yaml", [f"night {i}" for i in range(8)])
        out = tmp_path / "run"
        # stderr is a pipe here, as under nohup or cron.
        r = run_against(srv, m, out, "--concurrency", "1", "--log-every", "0.2",
                        "--budget", "0.70")
    assert r.code == 3, r.output
    lines = r.stderr.splitlines()
    progress = [x for x in lines if " progress: " in x]
    assert len(progress) >= 2, r.stderr
    assert re.search(r"progress: \d+/8 finished \(\d+ succeeded, 0 failed\), \d+ retrying, "
                     r"[\d.]+ img/min, spent this run \$[\d.]+ \(folder \$[\d.]+\), ETA ", progress[-1])
    stop = [i for i, x in enumerate(lines) if "stopping (the $0.70 budget is reached)" in x]
    done = [i for i, x in enumerate(lines) if x.startswith("stopped: the $0.70 budget")]
    assert len(stop) == 1 and done and stop[0] < done[0]
    # --log-every 0: no lines.
    m2 = write_manifest(tmp_path / "m2.yaml", ["quiet"])
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.3)) as srv:
        r = run_against(srv, m2, tmp_path / "run2", "--log-every", "0")
    assert r.code == 0 and " progress: " not in r.stderr


def test_verbose_logs_one_line_per_attempt(tmp_path: Path) -> None:
    config = FakeConfig(api_key=SECRET, rules=[Rule("limited", "429", times=2)])
    with ThreadedFakeServer(config) as srv:
        m = write_manifest(tmp_path / "m.yaml", ["limited one"])
        r = run_against(srv, m, tmp_path / "run", "-v", "--concurrency", "1")
    assert r.code == 0, r.output
    job = ledger_lines(tmp_path / "run")[0]["job_id"]
    mine = [x for x in r.stderr.splitlines() if f"batchgen.live.pool: {job}: attempt" in x]
    assert len(mine) == 3, "\n".join(mine)
    assert "attempt 1: rate_limited: HTTP 429" in mine[0] and "retrying in" in mine[0]
    assert "attempt 2: rate_limited" in mine[1] and mine[2].endswith("attempt 3: ok")
    assert all(len(x) < 400 for x in mine)


# -- 12. spreadsheet hints ---------------------------------------------------------------------


def test_spreadsheet_mistakes_get_hints(tmp_path: Path) -> None:
    bad = tmp_path / "sheet.csv"
    # Excel: a BOM, CRLF, a misspelt header, a ratio it turned into a time, empty trailing
    # columns, and 16x9 / 16/9 typed by hand.
    bad.write_bytes(
        b"\xef\xbb\xbfprompt,aspect_raito,image_size,count,,\r\n"
        b"a cat,16:09:00,1024,2.0,,\r\n"
        b"a dog,1:1,2K,1,,\r\n"
    )
    r = cli("validate", bad)
    assert r.code == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"batchgen: {bad}:1: aspect_raito: unknown column; "
                               "did you mean aspect_ratio?")
    # The misspelt column's values are still checked, as the field it names.
    assert any(":2: aspect_raito: '16:09:00' is not one of" in x and "did you mean 16:9?" in x
               and "as a time" in x for x in lines)
    assert any(":2: image_size: '1024' is not one of 512, 1K, 2K, 4K; did you mean 1K?" in x
               for x in lines)
    assert not any(": count:" in x or "has no name" in x for x in lines)  # 2.0, empty columns
    assert len(lines) == 3, r.stderr
    fixed = tmp_path / "fixed.csv"
    fixed.write_bytes(b"prompt,aspect_ratio,count,,\r\na cat,16:9,2.0,,\r\n")
    assert cli("validate", fixed).code == 0
    for typed in ("16x9", "16/9"):
        f = tmp_path / "r.csv"
        f.write_text(f"prompt,aspect_ratio\nx,{typed}\n")
        assert "did you mean 16:9?" in cli("validate", f).stderr
    promt = tmp_path / "promt.csv"
    promt.write_text("promt,aspect_raito\nx,16x9\n")
    r = cli("validate", promt)
    assert r.code == 2 and "promt: unknown column; did you mean prompt?" in r.stderr
    assert "required column missing" not in r.stderr
    assert f"{promt}:2: aspect_raito: '16x9' is not one of" in r.stderr


def test_semicolons_encodings_and_yaml_get_the_same_hints(tmp_path: Path) -> None:
    semi = tmp_path / "semi.csv"
    semi.write_text("prompt;aspect_ratio\na cat;1:1\n")
    r = cli("validate", semi)
    assert r.code == 2 and "separated by ';', not ','" in r.stderr
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt\ncafé au lait\n".encode("latin-1"))
    r = cli("validate", latin)
    assert r.code == 2 and "not UTF-8 text" in r.stderr and "CSV UTF-8" in r.stderr
    jl = tmp_path / "latin.jsonl"
    jl.write_bytes('{"prompt": "café"}\n'.encode("latin-1"))
    r = cli("validate", jl)
    assert r.code == 2 and "save the file as UTF-8" in r.stderr
    y = tmp_path / "m.yaml"
    y.write_text("jobs:\n  - promt: x\n    prompt: y\n    image_size: 1024\n    count: 2.0\n")
    r = cli("validate", y)
    assert r.code == 2
    assert f"{y}:2: promt: unknown field; did you mean prompt?" in r.stderr
    # The same message as the CSV reader gives for the cell 1024.
    assert f"{y}:4: image_size: '1024' is not one of 512, 1K, 2K, 4K; did you mean 1K?" in r.stderr
    assert ": count:" not in r.stderr


def test_a_model_typo_names_the_flag_not_a_manifest_line(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.yaml", ["a", "b"])
    r = cli("validate", m, "--model", "gemini-3-pro-imag")
    # An error now (issue 20): the model table knows every model, and --prices adds to it.
    assert r.code == 2, r.output
    assert ("batchgen: --model: unknown model 'gemini-3-pro-imag'; did you mean "
            "gemini-3-pro-image?") in r.stderr
    assert "m.yaml:" not in r.stderr and len(r.stderr.splitlines()) == 1
