"""batchgen from Python: ``batchgen.run`` end to end against the fake server over HTTP, outside
and inside a running event loop, and the folder read back with ``status``, ``records`` and
``to_dataset``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import batchgen
from batchgen.fake import FakeConfig, ThreadedFakeServer
from batchgen.fake.faults import Rule
from tests.helpers.cli import SECRET, clean_env, cli, ledger_lines

MANIFEST = """\
jobs:
  - id: pets
    prompt: "a {animal} on a {place}"
    vars: {animal: [cat, dog], place: [sofa, rug]}
    meta: {label: "{animal}"}
  - prompt: a plain mug
    meta: {sku: "00123"}
"""


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANYFAST_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BATCHGEN_API_KEY", SECRET)


def fast(server: ThreadedFakeServer) -> dict[str, Any]:
    return {"base_url": server.url, "provider": "anyfast",
            "settings": batchgen.RunSettings(concurrency=4, backoff_initial_s=0.01)}


def test_run_a_manifest_then_read_it_back(server: ThreadedFakeServer, tmp_path: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "pets.yaml"
    manifest.write_text(MANIFEST)
    out = tmp_path / "run"
    res = batchgen.run(manifest, out=out, **fast(server))
    assert isinstance(res, batchgen.RunResult)
    assert (res.succeeded, res.failed, res.already_done, res.ok) == (5, 0, 0, True)
    assert res.folder == out and res.stop_reason == "completed"
    assert res.spent_usd == pytest.approx(sum(float(r["cost_usd"]) for r in ledger_lines(out)))
    assert res.spent_usd > 0 and server.stats.billed_images == 5
    assert capfd.readouterr() == ("", "")  # never prints unless asked

    st = batchgen.status(out)
    assert (st.succeeded, st.failed, st.pending) == (5, 0, 0)
    assert st.cost_usd == pytest.approx(res.folder_spent_usd)

    recs = list(batchgen.records(out))
    assert len(recs) == 5 and all(isinstance(r, batchgen.Record) and r.succeeded for r in recs)
    by_prompt = {r.prompt: r for r in recs}
    dog = by_prompt["a dog on a rug"]
    assert dog.vars == {"animal": "dog", "place": "rug"} and dog.meta["label"] == "dog"
    assert by_prompt["a plain mug"].meta == {"sku": "00123"}
    for r in recs:
        assert r.image is not None and r.image.is_relative_to(out)
        with Image.open(r.image) as im:
            im.load()
            assert im.size == (r.ledger.width, r.ledger.height)

    # Again: nothing left to send, nothing paid.
    again = batchgen.run(manifest, out=out, **fast(server))
    assert (again.succeeded, again.already_done, again.spent_usd) == (0, 5, 0.0)
    assert server.stats.billed_images == 5
    # And the folder is the command's: `batchgen status` reads it.
    assert cli("status", out, "--json").code == 0


def test_run_inside_a_running_event_loop(server: ThreadedFakeServer, tmp_path: Path) -> None:
    jobs = [{"prompt": "a red mug", "count": 2}, {"prompt": "a blue lamp", "image_size": "2K"}]
    threads: list[str] = []

    async def notebook_cell() -> batchgen.RunResult:
        # As in Jupyter: a loop is running in this thread; asyncio.run would refuse.
        loop = asyncio.get_running_loop()
        ticks = 0

        def tick() -> None:
            nonlocal ticks
            ticks += 1

        loop.call_soon(tick)
        res = batchgen.run(jobs, out=tmp_path / "nb", **fast(server))
        threads.append(threading.current_thread().name)
        await asyncio.sleep(0)
        assert ticks == 1  # the cell's loop is alive and well afterwards
        return res

    res = asyncio.run(notebook_cell())
    assert (res.succeeded, res.failed) == (3, 0) and server.stats.billed_images == 3
    assert threads == [threading.main_thread().name]
    lines = ledger_lines(tmp_path / "nb")
    assert sorted(str(r["image_size"]) for r in lines) == ["1K", "1K", "2K"]
    # The jobs are a manifest next to the folder, so errors name a line and resuming works.
    assert (tmp_path / "nb.manifest.yaml").is_file()
    assert batchgen.run(jobs, out=tmp_path / "nb", **fast(server)).already_done == 3
    # Outside a loop, the same call.
    assert batchgen.run(jobs, out=tmp_path / "nb", **fast(server)).already_done == 3


async def test_run_from_a_coroutine_under_pytest_asyncio(server: ThreadedFakeServer,
                                                          tmp_path: Path) -> None:
    res = batchgen.run([{"prompt": "an owl"}], out=tmp_path / "owl", **fast(server))
    assert res.succeeded == 1 and server.stats.billed_images == 1


def test_jobs_with_defaults_columns_and_relative_references(
    server: ThreadedFakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 24), (200, 10, 10)).save(tmp_path / "ref.png")
    manifest = {"defaults": {"aspect_ratio": "4:5"},
                "jobs": [{"prompt": "like this one", "images": ["ref.png"]}]}
    res = batchgen.run(manifest, out="runs/ref", defaults={"image_size": "2K",
                                                         "meta.batch": 7}, **fast(server))
    assert res.succeeded == 1
    (line,) = ledger_lines(tmp_path / "runs" / "ref")
    assert (line["image_size"], line["aspect_ratio"]) == ("2K", "4:5")
    assert line["meta"] == {"batch": "7"}  # --set meta values are text unless typed
    refs = line["references"]
    assert isinstance(refs, list) and Path(refs[0]["path"]) == tmp_path / "ref.png"


def test_bad_input_raises_batchgen_errors_and_makes_nothing(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    with pytest.raises(batchgen.InputError) as err:
        batchgen.run([{"promt": "a cat"}], out=tmp_path / "bad", **fast(server))
    problem = str(err.value.problems[0])
    assert problem.startswith(f"{tmp_path / 'bad.manifest.yaml'}:2") and "promt" in problem
    assert not (tmp_path / "bad").exists() and server.stats.billed_images == 0
    with pytest.raises(batchgen.InputError, match="out: a run folder is needed"):
        batchgen.run([{"prompt": "a cat"}])
    with pytest.raises(batchgen.InputError, match="no such run folder"):
        batchgen.status(tmp_path / "nowhere")
    with pytest.raises(batchgen.InputError, match="columns: expected a dict"):
        batchgen.run(tmp_path / "m.csv", columns=[("prompt", "Description")])  # type: ignore[arg-type]


def test_a_stop_that_fails_every_job_raises_with_the_result(tmp_path: Path) -> None:
    with ThreadedFakeServer(FakeConfig(api_key="another-key")) as other, \
            pytest.raises(batchgen.RunStopped) as err:
        batchgen.run([{"prompt": "a cat"}], out=tmp_path / "auth", **fast(other))
    assert isinstance(err.value, batchgen.BatchgenError)
    assert err.value.result.succeeded == 0 and err.value.result.stop_reason == "fatal"
    assert SECRET not in str(err.value) and SECRET not in repr(err.value.result)


def test_to_dataset_has_the_export_columns_and_images(server: ThreadedFakeServer,
                                                      tmp_path: Path) -> None:
    home = tmp_path / "hf"
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(home),
                      HF_DATASETS_CACHE=str(home / "datasets"))
    manifest = tmp_path / "pets.yaml"
    manifest.write_text(MANIFEST)
    out = tmp_path / "run"
    batchgen.run(manifest, out=out, **fast(server))
    ds = batchgen.to_dataset(out)
    import datasets

    assert isinstance(ds, datasets.Dataset) and ds.num_rows == 5
    assert {"image", "job_id", "prompt", "animal", "place", "label", "sku"} <= set(ds.column_names)
    for row in ds:
        if row["prompt"] == "a plain mug":
            assert row["sku"] == "00123" and row["animal"] is None
            continue
        assert row["label"] == row["animal"] and row["prompt"] == (
            f"a {row['animal']} on a {row['place']}")
        assert isinstance(row["image"], Image.Image) and row["image"].size == (
            row["width"], row["height"])
    # A new job after a run shows in the next dataset (the cache is keyed on the ledger).
    manifest.write_text(MANIFEST + "  - prompt: a green cup\n")
    batchgen.run(manifest, out=out, **fast(server))
    assert batchgen.to_dataset(out).num_rows == 6


def test_import_batchgen_loads_none_of_the_pipeline() -> None:
    code = ("import sys, batchgen; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'aiohttp', 'PIL', 'yaml', 'asyncio', 'pyarrow', 'datasets'}), "
            "'batchgen.python_api.running' in sys.modules, callable(batchgen.run), "
            "'batchgen.python_api.running' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=clean_env())
    assert out.stdout.split() == ["[]", "False", "True", "True"]
    assert "run" in dir(batchgen)
    with pytest.raises(AttributeError):
        batchgen.nothing_here  # noqa: B018


def test_a_budget_stop_is_a_result_not_an_exception(server: ThreadedFakeServer,
                                                     tmp_path: Path) -> None:
    jobs = [{"prompt": f"a mug, take {i}"} for i in range(6)]
    opts = fast(server)
    opts["settings"] = batchgen.RunSettings(concurrency=1, budget_usd=0.3)
    res = batchgen.run(jobs, out=tmp_path / "b", **opts)
    assert res.stop_reason == "budget" and not res.ok
    assert 0 < res.succeeded < 6 and res.folder_spent_usd <= 0.3
    assert server.stats.billed_images == res.succeeded
    # selection and a raised budget: the rest, one at a time.
    opts["settings"] = batchgen.RunSettings(concurrency=1, budget_usd=10.0)
    more = batchgen.run(jobs, out=tmp_path / "b", selection=batchgen.Selection(limit=1), **opts)
    assert (more.succeeded, more.already_done) == (1, res.succeeded)


def test_reading_a_folder_of_failures_prints_nothing(server: ThreadedFakeServer, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "hf"
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(home),
                      HF_DATASETS_CACHE=str(home / "datasets"))
    server.config.rules = [Rule(match="forbidden", fault="block")]
    res = batchgen.run([{"prompt": "a forbidden cat"}, {"prompt": "a forbidden dog"}],
                       out=tmp_path / "f",
                       **fast(server))
    assert (res.succeeded, res.failed, res.ok) == (0, 2, False)
    assert res.errors == {"blocked": 2}
    with (tmp_path / "f" / "ledger.jsonl").open("a") as fh:
        fh.write('{"job_id": "torn-1", "status": "succ\n')  # a torn line: warned about, in logging
    recs = list(batchgen.records(tmp_path / "f"))
    assert [r.status for r in recs] == ["failed", "failed"] and all(r.image is None for r in recs)
    assert [r.error.kind for r in recs if r.error] == ["blocked", "blocked"]
    assert list(batchgen.records(tmp_path / "f", failed=False)) == []
    assert batchgen.to_dataset(tmp_path / "f").num_rows == 0
    failures = batchgen.to_dataset(tmp_path / "f", include_failed=True)
    assert failures.num_rows == 2 and set(failures["status"]) == {"failed"}
    assert capfd.readouterr() == ("", "")


def test_ctrl_c_in_a_notebook_stops_the_run_in_its_thread_gracefully(tmp_path: Path) -> None:
    import signal

    jobs = [{"prompt": f"a lamp, take {i}"} for i in range(20)]
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, latency_s=0.15)) as slow:
        opts = fast(slow)
        opts["settings"] = batchgen.RunSettings(concurrency=1, backoff_initial_s=0.01)

        def interrupt_when_two_are_done() -> None:
            deadline = 200
            while slow.stats.billed_images < 2 and deadline:
                threading.Event().wait(0.02)
                deadline -= 1
            os.kill(os.getpid(), signal.SIGINT)  # what Jupyter's "interrupt the kernel" does

        async def cell() -> batchgen.RunResult:
            threading.Thread(target=interrupt_when_two_are_done, daemon=True).start()
            return batchgen.run(jobs, out=tmp_path / "i", **opts)

        # Not asyncio.run, whose own SIGINT handler cancels the task: a kernel's loop leaves
        # SIGINT to Python, which raises KeyboardInterrupt in the main thread.
        loop = asyncio.new_event_loop()
        try:
            res = loop.run_until_complete(cell())
        finally:
            loop.close()
        assert res.stop_reason == "interrupted"
        assert 2 <= res.succeeded < 20
        # The request in flight was waited for and saved: everything billed is in the ledger.
        assert slow.stats.billed_images == res.succeeded
        assert len(ledger_lines(tmp_path / "i")) == res.succeeded


def test_a_folder_remembers_its_provider_and_base_url_from_python(
        server: ThreadedFakeServer, tmp_path: Path) -> None:
    """Issue 24: batchgen.run of a folder without provider= or base_url= goes where its jobs
    went; one that contradicts it raises InputError before anything is sent."""
    jobs = [{"prompt": f"a kite {i}"} for i in range(3)]
    out = tmp_path / "kites"
    first = batchgen.run(jobs, out=out, provider="google", base_url=server.url,
                         selection=batchgen.Selection(limit=1),
                         settings=batchgen.RunSettings(backoff_initial_s=0.01))
    assert first.succeeded == 1
    again = batchgen.run(jobs, out=out, settings=batchgen.RunSettings(backoff_initial_s=0.01))
    assert (again.succeeded, again.already_done) == (2, 1)
    assert server.stats.requests == 3
    with pytest.raises(batchgen.InputError, match=r"google.*anyfast"):
        batchgen.run(jobs, out=out, provider="anyfast")
    assert server.stats.requests == 3
