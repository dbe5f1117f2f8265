"""Benchmark ``batchgen export`` with and without issue 20's options: time and peak memory.

A SYNTHETIC run folder (ledger lines written directly) of N real PNGs of SIDE x SIDE pixels
(blocky noise; 32 distinct images hard-linked N/32 times each), then,
each export in its own process (peak RSS from ``os.wait4``):

- imagefolder and webdataset as they are (the path of today: hard links, tar);
- the same with ``--name '{label}-{name}'`` (a name per row, unique);
- imagefolder and parquet with ``--max-side 256 --image-format jpeg --quality 90``.

Running two sizes shows whether memory stays flat as the folder grows. ``--baseline DIR`` also
times the plain exports with the code checked out in DIR (e.g. /work/main), for "as fast as
before". Writes a section of bench/RESULTS.md unless ``--no-write``.

    .venv/bin/python bench/export_encode.py --sizes 500,4000 --baseline /work/main
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from PIL import Image
from results_md import write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- bench/export_encode.py: begin -->", "<!-- bench/export_encode.py: end -->"
DISTINCT = 32


def make_run(path: Path, n: int, side: int) -> None:
    rng = random.Random(7)
    sources = []
    for k in range(DISTINCT):
        buf = io.BytesIO()
        # Blocky noise: every pixel still to decode and resize, but a PNG of ~1/20 the size of
        # pure noise, so the WebDataset shards do not fill the shared disk.
        cells = side // 8
        Image.frombytes("RGB", (cells, cells), rng.randbytes(cells * cells * 3)).resize(
            (side, side), Image.Resampling.NEAREST).save(buf, "PNG")
        src = path / "src" / f"{k}.png"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(buf.getvalue())
        sources.append((src, hashlib.sha256(buf.getvalue()).hexdigest()))
    with (path / "ledger.jsonl").open("wb") as ledger:
        for i in range(n):
            job_id = f"row{i}-{hashlib.blake2b(str(i).encode(), digest_size=5).hexdigest()}"
            rel = f"images/{job_id[-2:]}/{job_id}.png"
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            src, sha = sources[i % DISTINCT]
            os.link(src, path / rel)
            ledger.write(orjson.dumps({
                "job_id": job_id, "status": "succeeded", "prompt": f"item {i}", "attempts": 1,
                "outputs": [rel], "cost_usd": 0.134, "model": "gemini-3-pro-image",
                "image_size": "1K", "aspect_ratio": "1:1", "width": side, "height": side,
                "mime_type": "image/png", "sha256": sha, "name": f"row{i}",
                "meta": {"label": f"L{i % 10}"},
                "finished_at": "2026-12-01T10:00:00.000+00:00",
            }) + b"\n")


def timed(run: Path, fmt: str, out: Path, extra: list[str], code: Path | None = None
          ) -> tuple[float, float]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "export", str(run), "--format", fmt, "--out",
         str(out), "--no-progress", *extra],
        # `-m` puts the working directory first on sys.path: run in the checkout to time.
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=code or ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"export {fmt} {extra} failed: {err}")
    shutil.rmtree(out, ignore_errors=True)
    return wall, usage.ru_maxrss / 1024


SCENARIOS: list[tuple[str, str, list[str]]] = [
    ("imagefolder", "as today", []),
    ("webdataset", "as today", []),
    ("imagefolder", "--name '{label}-{name}'", ["--name", "{label}-{name}"]),
    ("imagefolder", "--max-side 256 --image-format jpeg --quality 90",
     ["--max-side", "256", "--image-format", "jpeg", "--quality", "90"]),
    ("parquet", "--max-side 256 --image-format jpeg --quality 90",
     ["--max-side", "256", "--image-format", "jpeg", "--quality", "90"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="500,4000")
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--baseline", type=Path, help="a checkout to time the plain exports with")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    rows = []
    load = os.getloadavg()
    started = time.monotonic()
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            run = work / f"run-{n}"
            make_run(run, n, args.side)
            for fmt, label, extra in SCENARIOS:
                wall, rss = timed(run, fmt, work / "out", extra)
                rows.append(f"| {fmt} {label} | {n:,} | {wall:.1f} s ({n / wall:,.0f} img/s) "
                            f"| {rss:.0f} MB |")
                print(rows[-1], flush=True)
                if args.baseline is not None and not extra:
                    wall, rss = timed(run, fmt, work / "out", extra, args.baseline)
                    rows.append(f"| {fmt} as today, code of {args.baseline} | {n:,} | "
                                f"{wall:.1f} s ({n / wall:,.0f} img/s) | {rss:.0f} MB |")
                    print(rows[-1], flush=True)
            shutil.rmtree(run, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = "\n".join([
        BEGIN,
        "## Export options of issue 20 (`bench/export_encode.py`)",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average when it "
        f"started: {' '.join(f'{x:.2f}' for x in load)} (shared 2-core machine)",
        f"- command: `.venv/bin/python bench/export_encode.py {' '.join(sys.argv[1:])}` "
        f"({time.monotonic() - started:.0f} s)",
        f"- SYNTHETIC folders: {args.side}x{args.side} blocky-noise PNGs "
        f"({DISTINCT} distinct, hard-linked), one process per export, peak RSS from os.wait4",
        "",
        "| export | images | time | peak RSS |",
        "|---|---|---|---|",
        *rows,
        END,
    ])
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END, RESULTS)


if __name__ == "__main__":
    main()
