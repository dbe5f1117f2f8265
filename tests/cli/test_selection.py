"""Choosing jobs: --limit, --only and --shard."""

from __future__ import annotations

from pathlib import Path

from batchgen.fake import ThreadedFakeServer
from tests.helpers.cli import ledger_lines, run_against, write_manifest


def test_limit_and_only(server: ThreadedFakeServer, tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n" + "".join(f"  - id: cat-{i}\n    prompt: cat {i}\n" for i in range(4))
                 + "".join(f"  - id: dog-{i}\n    prompt: dog {i}\n" for i in range(4)))
    out = tmp_path / "run"
    r = run_against(server, m, out, "--limit", "3")
    assert r.code == 0, r.output
    assert [x["prompt"] for x in ledger_lines(out)] == ["cat 0", "cat 1", "cat 2"] or \
        sorted(x["prompt"] for x in ledger_lines(out)) == ["cat 0", "cat 1", "cat 2"]
    r = run_against(server, m, out, "--only", "dog-*")
    assert r.code == 0, r.output
    assert sorted(str(x["prompt"]) for x in ledger_lines(out))[3:] == [f"dog {i}" for i in range(4)]
    assert server.stats.requests == 7


def test_shards_cover_every_job_once(server: ThreadedFakeServer, tmp_path: Path) -> None:
    prompts = [f"shard {i}" for i in range(30)]
    m = write_manifest(tmp_path / "m.yaml", prompts)
    seen: list[str] = []
    for k in (1, 2, 3):
        out = tmp_path / f"shard{k}"
        r = run_against(server, m, out, "--shard", f"{k}/3")
        assert r.code == 0, r.output
        got = [str(x["prompt"]) for x in ledger_lines(out)]
        assert 0 < len(got) < 30
        seen += got
    assert sorted(seen) == sorted(prompts)
    assert server.stats.requests == 30
