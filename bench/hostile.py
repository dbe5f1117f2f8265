"""Memory figures for issue 10's input items, each from the CLI's own peak RSS (``os.wait4``).

    .venv/bin/python bench/hostile.py                 # both scenarios, prints a Markdown table
    .venv/bin/python bench/hostile.py --only refs

- ``refs``: 8 distinct large references (8000 x 6000 pixels, 80 MB files: the issue's case) at
  concurrency 8, on Anyfast's 20 MB request limit, so every one is decoded and shrunk.
- ``dupes``: ``batchgen validate`` on a 1,000,000-row JSONL manifest, which runs the duplicate
  request check (one fixed-size digest per job); the peak is compared with the same manifest at
  100,000 rows, to show the cost per job.

The results go into bench/RESULTS.md by hand (the notes section).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from batchgen.fake import FakeConfig, ThreadedFakeServer  # noqa: E402

MiB = 1024 * 1024


def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, float, int, str]:
    """Exit code, wall seconds, peak RSS in bytes of the CLI process alone, stderr."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "batchgen", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return os.waitstatus_to_exitcode(status), time.monotonic() - t0, usage.ru_maxrss * 1024, text


def bench_refs(work: Path) -> list[str]:
    refs = []
    for i in range(8):
        buf = io.BytesIO()
        Image.new("RGB", (8000, 6000), (30 * i, 120, 250 - 30 * i)).save(buf, "JPEG", quality=85)
        path = work / f"ref{i}.jpg"
        path.write_bytes(buf.getvalue() + b"\0" * (80 * MiB - buf.tell()))  # 80 MB on disk
        refs.append(path)
    manifest = work / "refs.yaml"
    manifest.write_text("jobs:\n" + "".join(
        f"  - {{prompt: 'use photo {i}', images: [{p.name}]}}\n" for i, p in enumerate(refs)))
    with ThreadedFakeServer(FakeConfig(api_key="bench-key")) as srv:
        env = {**os.environ, "BATCHGEN_API_KEY": "bench-key"}
        code, wall, peak, err = run_cli(
            ["run", str(manifest), "--out", str(work / "run"), "--base-url", srv.url,
             "--no-progress", "--concurrency", "8", "--no-gallery"], env)
    assert code == 0, err
    decoded = 8000 * 6000 * 4
    return [
        f"| 16 shrink memory | 8 distinct 8000x6000 references (80 MB files, {decoded // MiB} MiB "
        f"decoded each), concurrency 8 | peak RSS {peak / MiB:.0f} MiB; {wall:.1f} s | "
        f"one decoded image at a time: < 8 x {decoded // MiB} MiB |"
    ]


def bench_dupes(work: Path) -> list[str]:
    rows = []
    for n in (100_000, 1_000_000):
        manifest = work / f"rows{n}.jsonl"
        with manifest.open("w") as fh:
            for i in range(n):
                fh.write(f'{{"prompt": "a photo of item {i} on a white background"}}\n')
        code, wall, peak, err = run_cli(["validate", str(manifest)], dict(os.environ))
        assert code == 0, err
        rows.append((n, wall, peak))
    (n0, _, p0), (n1, w1, p1) = rows
    per_job = (p1 - p0) / (n1 - n0)
    return [
        f"| 20 duplicate requests | `batchgen validate`, {n1:,} JSONL rows (vs {n0:,}) | "
        f"peak RSS {p1 / MiB:.0f} MiB vs {p0 / MiB:.0f} MiB: {per_job:.0f} bytes per job; "
        f"{w1:.1f} s | streamable: a fixed-size digest per job |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="refs,dupes")
    only = parser.parse_args().only.split(",")
    lines = ["| item | scenario | result | bound |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="batchgen-bench-") as tmp:
        if "refs" in only:
            lines += bench_refs(Path(tmp))
        if "dupes" in only:
            lines += bench_dupes(Path(tmp))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
