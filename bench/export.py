"""Benchmark ``batchgen export``: N small images in each format; time and peak memory.

The run folder is SYNTHETIC, written directly rather than by ``batchgen run``, so that 100,000
images take seconds to make: 256 distinct tiny PNGs (a few hundred bytes each, real images that
Pillow decodes) spread over ``images/<hh>/<job id>.png``, and one ledger line per job in the new
shape (``name``, ``source``, ``meta`` with three fields, references as path + sha256), about one
line in 50 a failure. With ``--jobs-file`` it also writes ``jobs.jsonl`` (every job current, with
changed meta), so the export joins the two.

Each export runs as ``python -m batchgen export`` in its own process; its peak RSS comes from
``os.wait4``, so no figure includes another process. Running the sizes 10,000 and 100,000 shows
whether memory stays flat as the folder grows. Writes a section of bench/RESULTS.md.

    .venv/bin/python bench/export.py --jobs-file   # 10,000 and 100,000: ~10 minutes, mostly
                                                 # making and deleting 100,000 files
    .venv/bin/python bench/export.py --sizes 1000 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import os
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
BEGIN, END = "<!-- bench/export.py: begin -->", "<!-- bench/export.py: end -->"
FORMATS = ("imagefolder", "webdataset", "parquet")


def tiny_pngs() -> list[bytes]:
    out = []
    for i in range(256):
        buf = io.BytesIO()
        Image.new("RGB", (16 + i % 8, 16), (i, 255 - i, (i * 7) % 256)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def make_run(path: Path, n: int, *, jobs_file: bool) -> float:
    t0 = time.monotonic()
    pngs = tiny_pngs()
    shas = [hashlib.sha256(p).hexdigest() for p in pngs]
    images = path / "images"
    for hh in range(256):
        (images / f"{hh:02x}").mkdir(parents=True, exist_ok=True)
    with (path / "ledger.jsonl").open("wb") as ledger, \
            (path / "jobs.jsonl").open("wb") as jobs:
        for i in range(n):
            job_id = f"row{i}-{hashlib.blake2b(str(i).encode(), digest_size=5).hexdigest()}"
            hh = job_id[-2:]
            k = i % 256
            ok = i % 50 != 7
            rel = f"images/{hh}/{job_id}.png"
            if ok:
                with open(path / rel, "wb") as fh:
                    fh.write(pngs[k])
            meta = {"sku": f"SKU-{i}", "label": i % 10, "weight": i / 7}
            ledger.write(orjson.dumps({
                "job_id": job_id, "status": "succeeded" if ok else "failed",
                "prompt": f"a product photo of item {i}, studio light", "attempts": 1,
                "outputs": [rel] if ok else [], "text": None,
                "usage": {"promptTokenCount": 19, "candidatesTokenCount": 1120},
                "cost_usd": 0.1344 if ok else 0.0, "latency_s": 21.5,
                "finished_at": f"2026-12-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000+00:00",
                "error": None if ok else {"kind": "blocked", "retryable": False,
                                          "http_status": None, "message": "IMAGE_SAFETY"},
                "model": "gemini-3-pro-image", "image_size": "1K", "aspect_ratio": "1:1",
                "references": [{"path": "refs/mug.png", "sha256": shas[0]}], "seed": i,
                "temperature": 1.0, "width": 16 + k % 8, "height": 16,
                "mime_type": "image/png", "sha256": shas[k] if ok else None,
                "name": f"row{i}", "source": f"products.csv:{i + 2}", "meta": meta,
            }) + b"\n")
            if jobs_file:
                jobs.write(orjson.dumps({"job_id": job_id, "name": f"row{i}",
                                         "source": f"products.csv:{i + 2}",
                                         "meta": {**meta, "label": (i + 1) % 10}}) + b"\n")
    if not jobs_file:
        (path / "jobs.jsonl").unlink()
    return time.monotonic() - t0


def timed_export(run: Path, fmt: str, out: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, the summary line) of one export in its own process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "export", str(run), "--format", fmt, "--out", str(out),
         "--split", "train=0.9,test=0.1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"export {fmt} failed: {stderr}")
    return wall, usage.ru_maxrss / 1024, stderr.strip().splitlines()[-1]


def du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated image counts")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--jobs-file", action="store_true", help="also write DIR/jobs.jsonl")
    ap.add_argument("--workdir", type=Path, help="keep the folders here (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    formats = args.formats.split(",")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    rows: list[str] = []
    notes: list[str] = []
    started = time.monotonic()
    load = os.getloadavg()
    try:
        for n in sizes:
            run = work / f"run-{n}"
            shutil.rmtree(run, ignore_errors=True)
            made = make_run(run, n, jobs_file=args.jobs_file)
            notes.append(f"synthetic run folder of {n:,} jobs written in {made:.1f} s "
                         f"(ledger {(run / 'ledger.jsonl').stat().st_size / 1e6:.0f} MB)")
            for fmt in formats:
                out = work / f"out-{n}-{fmt}"
                wall, rss, line = timed_export(run, fmt, out)
                rows.append(f"| export {fmt} | {n:,} images | {wall:.1f} s "
                            f"({n / wall:,.0f} img/s); peak RSS {rss:.0f} MB; "
                            f"output {du(out):,.1f} MB |")
                notes.append(f"{fmt} {n:,}: `{line}`")
                print(rows[-1], flush=True)
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    section = "\n".join([
        BEGIN,
        "## Export (`bench/export.py`)",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"load average when it started: {' '.join(f'{x:.2f}' for x in load)} (shared machine)",
        f"- command: `.venv/bin/python bench/export.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" ({time.monotonic() - started:.0f} s)",
        "- the run folders are SYNTHETIC (tiny real PNGs and ledger lines written directly, "
        "2% failures); `--split train=0.9,test=0.1`; each export in its own process, peak RSS "
        "from `os.wait4`"
        + ("; with `jobs.jsonl`" if args.jobs_file else ""),
        "",
        "| scenario | size | result |",
        "|---|---|---|",
        *rows,
        "",
        *[f"- {n}" for n in notes],
        END,
    ])
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END, RESULTS)


if __name__ == "__main__":
    main()
