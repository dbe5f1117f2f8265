"""Issue 19: run folders and datasets someone else (or a kill) made: hand-edited amounts, job ids
that name paths, an export cut off between its renames.

Each runs the CLI as a subprocess against the fake server over HTTP and looks at the real disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgen.fake import FakeConfig, ThreadedFakeServer
from tests.helpers.cli import SECRET, clean_env, cli, ledger_lines, run_against, write_manifest


@pytest.fixture(scope="module")
def fake() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET)) as srv:
        yield srv


def small_run(fake: ThreadedFakeServer, tmp_path: Path, n: int = 3) -> Path:
    m = write_manifest(tmp_path / "m.yaml", [f"folder case {i}" for i in range(n)])
    out = tmp_path / "run"
    r = run_against(fake, m, out, "--no-gallery")
    assert r.code == 0, r.output
    return out


def edit_line(ledger: Path, index: int, old: str, new: str) -> None:
    lines = ledger.read_text().splitlines()
    assert old in lines[index], lines[index]
    lines[index] = lines[index].replace(old, new)
    ledger.write_text("\n".join(lines) + "\n")


def assert_run_refused(fake: ThreadedFakeServer, tmp_path: Path, out: Path, where: str,
                       requests: int) -> None:
    """``run`` on the folder exits 2 naming ``where``, and sends nothing."""
    r = run_against(fake, tmp_path / "m.yaml", out, "--no-gallery")
    assert r.code == 2 and where in r.stderr, r.output
    assert fake.stats.requests == requests


# -- 17. a NaN or 1e999 cost is a refused line, not a skipped one -------------------------------


@pytest.mark.parametrize("bad", ["NaN", "1e999", "-Infinity"])
def test_a_non_finite_cost_is_refused_naming_the_line(fake: ThreadedFakeServer, tmp_path: Path,
                                                      bad: str) -> None:
    out = small_run(fake, tmp_path)
    ledger = out / "ledger.jsonl"
    cost = json.loads(ledger.read_text().splitlines()[1])["cost_usd"]
    edit_line(ledger, 1, f'"cost_usd":{cost}', f'"cost_usd":{bad}')
    requests = fake.stats.requests
    for args in (["status", out], ["report", out], ["gallery", out]):
        r = cli(*args)
        assert r.code == 2, (args, r.output)
        assert "ledger.jsonl:2" in r.stderr and "cost_usd" in r.stderr, r.output
        assert "malformed" not in r.stderr
    # Skipped, the line's job would read as pending and be bought again.
    assert_run_refused(fake, tmp_path, out, "ledger.jsonl:2", requests)


# -- 4. job ids read back from a folder follow the manifest ids' rule --------------------------


def test_a_job_id_that_names_a_path_is_refused_everywhere(fake: ThreadedFakeServer,
                                                          tmp_path: Path) -> None:
    out = small_run(fake, tmp_path)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    ledger = out / "ledger.jsonl"
    job_id = str(ledger_lines(out)[2]["job_id"])
    edit_line(ledger, 2, f'"job_id":"{job_id}"', '"job_id":"../../../victim"')
    for args in (["export", out, "--format", "imagefolder", "--out", tmp_path / "ds" / "a"],
                 ["export", out, "--format", "parquet", "--out", tmp_path / "pq"],
                 ["status", out], ["report", out], ["gallery", out],
                 ["merge", out, "--out", tmp_path / "merged"]):
        r = cli(*args)
        assert r.code == 2, (args, r.output)
        assert "ledger.jsonl:3" in r.stderr and "job_id" in r.stderr, (args, r.output)
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())
    assert_run_refused(fake, tmp_path, out, "ledger.jsonl:3", fake.stats.requests)


def test_a_bad_id_in_jobs_jsonl_is_refused_by_export(fake: ThreadedFakeServer,
                                                     tmp_path: Path) -> None:
    out = small_run(fake, tmp_path)
    jobs = out / "jobs.jsonl"
    first = jobs.read_text().splitlines()[0]
    job_id = json.loads(first)["job_id"]
    jobs.write_text(jobs.read_text().replace(f'"job_id":"{job_id}"', '"job_id":"a/../../x"', 1))
    r = cli("export", out, "--format", "imagefolder", "--out", tmp_path / "ds")
    assert r.code == 2, r.output
    assert "jobs.jsonl:1" in r.stderr and "job_id" in r.stderr, r.output


# -- 11. a kill between export's renames --------------------------------------------------------

# The CLI with os.rename made deadly at the moment the finished staging folder would be renamed
# into place: where the export used two renames, the kill fell between them.
KILL_AT_SECOND_RENAME = """
import os, signal, sys
real = os.rename
def rename(src, dst, *a, **k):
    if ".partial-" in str(src):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.rename = rename
from batchgen.cli.app import main
sys.argv = ["batchgen", *sys.argv[1:]]
main()
"""


def test_a_kill_while_the_export_is_swapped_in_leaves_a_whole_dataset(
        fake: ThreadedFakeServer, tmp_path: Path) -> None:
    out = small_run(fake, tmp_path)
    ds = tmp_path / "ds"
    assert cli("export", out, "--format", "imagefolder", "--out", ds).code == 0
    before = (ds / "metadata.jsonl").read_text()
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_SECOND_RENAME, "export", str(out), "--format",
         "imagefolder", "--out", str(ds)], capture_output=True, text=True, env=clean_env(),
        timeout=60)
    # Whether or not the kill came, PATH holds a whole dataset and nothing is left beside it.
    assert (ds / "metadata.jsonl").read_text() == before, proc.stderr
    assert len(list(ds.glob("images/*/*.png"))) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ds")) == ["ds"], (
        proc.returncode, proc.stderr)


def test_an_old_copy_left_aside_is_put_back_by_the_next_export(
        fake: ThreadedFakeServer, tmp_path: Path) -> None:
    """A filesystem that cannot exchange two folders: what two renames cut off by a kill left."""
    out = small_run(fake, tmp_path)
    ds = tmp_path / "ds"
    assert cli("export", out, "--format", "imagefolder", "--out", ds).code == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ds.rename(tmp_path / f"ds.old-{dead}")
    r = cli("export", out, "--format", "parquet", "--out", ds)
    assert r.code == 0, r.output
    assert "putting back" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ds")) == ["ds"]
    assert list(ds.glob("*.parquet"))
