"""Issue 24: a run folder remembers how it was run (provider, base URL, model, --fake).

Every case runs the CLI as a subprocess against the fake server over HTTP. A resume without the
flags must go where the folder's jobs went; a flag that contradicts the folder is refused (exit
2) before anything is sent.
"""

from __future__ import annotations

import json
from pathlib import Path

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import SECRET, clean_env, cli, ledger_lines, wait_for

# Only a Google key: a resume that forgot the folder's provider would ask for an anyfast key.
GOOGLE_ENV = clean_env(GEMINI_API_KEY=SECRET)


def csv_manifest(tmp: Path, n: int) -> Path:
    path = tmp / "items.csv"
    path.write_text("prompt\n" + "".join(f"a red mug number {i}\n" for i in range(n)))
    return path


def run(*args: str | Path, env: dict[str, str] = GOOGLE_ENV):  # type: ignore[no-untyped-def]
    return cli("run", *args, "--no-progress", "--no-gallery", "--backoff", "0.01", env=env)


def succeeded(out: Path) -> int:
    return sum(1 for r in ledger_lines(out) if r["status"] == "succeeded")


def test_resume_without_flags_uses_the_folders_provider_and_base_url(
        server: ThreadedFakeServer, tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 3), tmp_path / "out"
    first = run(m, "--out", out, "--provider", "google", "--base-url", server.url, "--limit", "1")
    assert first.code == 0, first.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["provider"] == "google" and meta["run_with"]["provider"] == "google"
    again = run(m, "--out", out)  # a new shell: no --provider, no --base-url
    assert again.code == 0, again.output
    assert succeeded(out) == 3
    assert server.stats.requests == 3


def test_a_flag_that_contradicts_the_folder_is_refused(server: ThreadedFakeServer,
                                                       tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 3), tmp_path / "out"
    assert run(m, "--out", out, "--provider", "google", "--base-url", server.url,
               "--limit", "1").code == 0
    sent = server.stats.requests
    env = clean_env(GEMINI_API_KEY=SECRET, ANYFAST_API_KEY=SECRET)
    other = run(m, "--out", out, "--provider", "anyfast", "--base-url", server.url, env=env)
    assert other.code == 2, other.output
    assert "google" in other.stderr and "anyfast" in other.stderr
    assert "new folder" in other.stderr and "--out" in other.stderr
    moved = run(m, "--out", out, "--base-url", "http://127.0.0.1:9")
    assert moved.code == 2, moved.output
    assert server.url in moved.stderr and "http://127.0.0.1:9" in moved.stderr
    model = run(m, "--out", out, "--model", "gemini-2.5-flash-image")
    assert model.code == 2, model.output
    assert "gemini-2.5-flash-image" in model.stderr and "gemini-3-pro-image" in model.stderr
    same = run(m, "--out", out, "--provider", "google", "--base-url", server.url)
    assert same.code == 0, same.output  # the folder's own values are no contradiction
    assert server.stats.requests == sent + 2


def test_the_folders_model_is_kept(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 2), tmp_path / "out"
    first = run(m, "--out", out, "--provider", "google", "--base-url", server.url,
                "--model", "gemini-2.5-flash-image", "--limit", "1")
    assert first.code == 0, first.output
    again = run(m, "--out", out)
    assert again.code == 0, again.output
    models = {r["model"] for r in ledger_lines(out)}
    assert models == {"gemini-2.5-flash-image"}
    assert succeeded(out) == 2


def test_batch_collection_from_a_new_shell_needs_no_provider(tmp_path: Path) -> None:
    from batchgen.fake import FakeConfig

    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=0.2)) as srv:
        m, out = csv_manifest(tmp_path, 2), tmp_path / "out"
        first = run(m, "--out", out, "--provider", "google", "--base-url", srv.url,
                    "--mode", "batch")
        assert first.code == 5, first.output
        assert wait_for(lambda: srv.stats.batches_created == 1)
        collect = run(m, "--out", out, "--mode", "batch", "--wait", "--poll-interval", "0.1")
        assert collect.code == 0, collect.output
        assert succeeded(out) == 2
        assert srv.stats.batches_created == 1


def test_a_fake_folder_remembers_it_was_fake(tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 2), tmp_path / "out"
    no_key = clean_env()
    first = run(m, "--out", out, "--fake", "--limit", "1", env=no_key)
    assert first.code == 0, first.output
    assert json.loads((out / "run.json").read_text())["run_with"]["fake"] is True
    again = run(m, "--out", out, env=no_key)  # no --fake, no key: the fake again, said so
    assert again.code == 0, again.output
    assert "--fake" in again.stderr
    assert succeeded(out) == 2


def test_fake_and_real_do_not_mix_in_one_folder(server: ThreadedFakeServer,
                                                tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 2), tmp_path / "out"
    assert run(m, "--out", out, "--provider", "google", "--base-url", server.url,
               "--limit", "1").code == 0
    fake = run(m, "--out", out, "--fake")
    assert fake.code == 2, fake.output
    assert "--fake" in fake.stderr and "new folder" in fake.stderr
    assert succeeded(out) == 1


# -- superseded images: what is still in images/, what prune moved, what came back ----------------


def test_status_after_prune_counts_moved_images_apart_and_a_restore_is_said(
        server: ThreadedFakeServer, tmp_path: Path) -> None:
    m, out = tmp_path / "birds.csv", tmp_path / "out"
    rows = "prompt\na robin\na crow\na swan\n"
    m.write_text(rows)
    flags = ("--out", out, "--provider", "google", "--base-url", server.url)
    assert run(m, *flags).code == 0
    m.write_text("prompt\na blue jay\na crow\na swan\n")
    assert run(m, *flags).code == 0
    before = cli("status", out).stdout
    assert "prune" in before and "moves them aside" in before
    assert cli("prune", out, "--yes").code == 0
    text = cli("status", out).stdout
    assert "superseded 1" in text
    assert "moves them aside" not in text  # prune would say "nothing superseded"
    assert f"1 moved to {out / 'superseded'}" in text
    st = json.loads(cli("status", out, "--json").stdout)
    assert (st["superseded"], st["superseded_in_images"], st["superseded_moved"]) == (1, 0, 1)
    m.write_text(rows)  # the edit undone: the robin's image comes back, and the run says so
    again = run(m, *flags)
    assert again.code == 0, again.output
    assert "restored 1 image" in again.stderr


def test_a_run_with_nothing_to_do_records_the_manifest_it_read(server: ThreadedFakeServer,
                                                               tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 3), tmp_path / "out"
    flags = ("--out", out, "--provider", "google", "--base-url", server.url)
    assert run(m, *flags).code == 0
    m.write_text("prompt\na red mug number 0\na red mug number 1\n")  # a row removed
    edited = run(m, *flags)
    assert edited.code == 0 and "manifest changed" in edited.stderr
    again = run(m, *flags)  # the same CSV as the run before: nothing changed since
    assert again.code == 0, again.output
    assert "manifest changed" not in again.stderr
    assert "resuming: 2 done" in again.stderr


# -- reserved spend after a kill -9 -------------------------------------------------------------


def test_reserved_spend_of_a_kill_clears_once_its_jobs_are_run_again(
        server: ThreadedFakeServer, tmp_path: Path) -> None:
    import signal

    from tests.helpers.cli import spawn, write_manifest
    from tests.helpers.runs import ENV, run_args, run_fast, spend, status

    server.config.latency_s = 1.0
    prompts = [f"killed {i}" for i in range(6)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    out = tmp_path / "run"
    proc = spawn(*run_args(server, m, out, "--concurrency", "3"), env=ENV)
    assert wait_for(lambda: len(ledger_lines(out)) >= 1 and server.stats.in_flight == 3,
                    timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert wait_for(lambda: server.stats.in_flight == 0, timeout=30)
    st = status(out)
    lost = int(st["unsettled_requests"])  # type: ignore[call-overload]
    assert lost >= 1
    text = cli("status", out).stdout
    assert "  reserved   $" in text and "clears" in text  # says when it clears
    server.config.latency_s = 0.0
    r = run_fast(server, m, out)
    assert r.code == 0, r.output
    # The run's own summary agrees with status: nothing of it is left reserved.
    assert "reserved for" not in r.stderr, r.stderr
    assert f"lost for {lost} request(s) a killed run sent" in r.stderr, r.stderr
    st = status(out)
    # The jobs were run again: those requests' outcome is as known as it will ever be. They
    # count as spent (the service bills a finished generation), no longer as reserved.
    assert st["unsettled_requests"] == 0 and st["unsettled_usd"] == 0.0
    assert st["lost_requests"] == lost
    assert spend(out) + float(st["lost_usd"]) >= server.stats.billed_usd  # type: ignore[arg-type]
    text = cli("status", out).stdout
    assert "  reserved   $" not in text
    assert f"{lost} request" in text and "killed" in text


# -- a host that is down stops the run ----------------------------------------------------------


def test_a_host_that_refuses_every_connection_stops_the_run_with_jobs_pending(
        tmp_path: Path) -> None:
    import time

    m, out = csv_manifest(tmp_path, 6), tmp_path / "out"
    t0 = time.monotonic()
    r = run(m, "--out", out, "--provider", "google", "--base-url", "http://127.0.0.1:1",
            "--concurrency", "4")
    assert r.code == 4, r.output
    assert "cannot reach 127.0.0.1:1: connection refused" in r.stderr
    assert time.monotonic() - t0 < 20
    assert ledger_lines(out) == []  # not one job recorded as failed
    st = json.loads(cli("status", out, "--json").stdout)
    assert (st["pending"], st["failed"]) == (6, 0)


def test_batch_mode_stops_at_its_first_call_to_a_host_that_is_down(tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 2), tmp_path / "out"
    r = run(m, "--out", out, "--provider", "google", "--base-url", "http://127.0.0.1:1",
            "--mode", "batch")
    assert r.code == 4, r.output
    assert "cannot reach 127.0.0.1:1: connection refused" in r.stderr
    assert ledger_lines(out) == []


def test_once_the_host_has_answered_connection_errors_are_failures_as_before(
        tmp_path: Path) -> None:
    from batchgen.fake import FakeConfig

    m, out = csv_manifest(tmp_path, 12), tmp_path / "out"
    srv = ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.2))
    srv.start()
    from tests.helpers.cli import spawn

    proc = spawn("run", m, "--out", out, "--provider", "google", "--base-url", srv.url,
                 "--no-progress", "--no-gallery", "--backoff", "0.2", "--max-attempts", "2",
                 "--concurrency", "1", "--log-every", "0.05", env=GOOGLE_ENV)
    try:
        assert wait_for(lambda: succeeded(out) >= 2, timeout=30)
    finally:
        srv.stop()  # the host goes down after it has answered
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    failed = [r for r in ledger_lines(out) if r["status"] == "failed"]
    assert failed and {r["error"]["kind"] for r in failed} == {"connection"}  # type: ignore[index]
    assert "cannot reach" not in err
    # The progress lines name the failure kinds.
    import re

    lines = [x for x in err.splitlines() if " progress: " in x and " 0 failed" not in x]
    assert lines and all(re.search(r"(\d+) failed \(connection \1\)", x) for x in lines), err


def test_estimate_of_a_folder_uses_its_model(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 3), tmp_path / "out"
    assert run(m, "--out", out, "--provider", "google", "--base-url", server.url,
               "--model", "gemini-2.5-flash-image", "--limit", "1").code == 0
    r = cli("estimate", m, "--out", out, "--json", env=GOOGLE_ENV)
    assert r.code == 0, r.output
    est = json.loads(r.stdout)
    assert est["done"] == 1 and est["jobs"] == 2
    assert set(est["by_model"]) == {"gemini-2.5-flash-image"}


def test_a_provider_from_the_environment_yields_to_the_folders(server: ThreadedFakeServer,
                                                               tmp_path: Path) -> None:
    m, out = csv_manifest(tmp_path, 2), tmp_path / "out"
    assert run(m, "--out", out, "--provider", "google", "--base-url", server.url,
               "--limit", "1").code == 0
    env = {**GOOGLE_ENV, "BATCHGEN_PROVIDER": "anyfast"}  # a shell's default, not a flag
    again = run(m, "--out", out, env=env)
    assert again.code == 0, again.output
    assert succeeded(out) == 2
    typed = run(m, "--out", out, "--provider", "anyfast", env=env)  # typed: a contradiction
    assert typed.code == 2, typed.output
