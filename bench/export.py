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
import statistics
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


def random_png(kb: int) -> tuple[bytes, int]:
    """A PNG of random pixels, about ``kb`` KB (noise does not compress, so neither PNG nor
    Parquet's codec can make it smaller), and its side; distinct every call."""
    side = max(int((kb * 1024 / 3) ** 0.5), 8)
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=0)
    return buf.getvalue(), side


def make_run(path: Path, n: int, *, jobs_file: bool, image_kb: int = 0) -> float:
    """The synthetic folder; ``image_kb``: distinct random PNGs of that size instead of 256
    shared tiny ones."""
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
            width = height = 16
            sha = shas[k]
            if ok and image_kb:
                data, width = random_png(image_kb)
                height, sha = width, hashlib.sha256(data).hexdigest()
                with open(path / rel, "wb") as fh:
                    fh.write(data)
            elif ok:
                width = 16 + k % 8
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
                "temperature": 1.0, "width": width, "height": height,
                "mime_type": "image/png", "sha256": sha if ok else None,
                "name": f"row{i}", "source": f"products.csv:{i + 2}", "meta": meta,
            }) + b"\n")
            if jobs_file:
                jobs.write(orjson.dumps({"job_id": job_id, "name": f"row{i}",
                                         "source": f"products.csv:{i + 2}",
                                         "meta": {**meta, "label": (i + 1) % 10}}) + b"\n")
    if not jobs_file:
        (path / "jobs.jsonl").unlink()
    return time.monotonic() - t0


def timed_export(run: Path, fmt: str, out: Path, *, split: bool = True
                 ) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, the summary line) of one export in its own process."""
    cmd = [sys.executable, "-m", "batchgen", "export", str(run), "--format", fmt, "--out",
           str(out), "--no-progress"]
    return timed_child(cmd + (["--split", "train=0.9,test=0.1"] if split else []), fmt)


def timed_child(cmd: list[str], what: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, the last line of stderr) of ``cmd`` in its own process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{what} failed: {stderr}")
    lines = stderr.strip().splitlines()
    return wall, usage.ru_maxrss / 1024, lines[-1] if lines else ""


def du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


FLOOR_BEGIN = "<!-- bench/export.py --floor: begin -->"
FLOOR_END = "<!-- bench/export.py --floor: end -->"


def cached_run(work: Path, n: int, image_kb: int) -> tuple[Path, str]:
    """A folder of ``n`` random images of ``image_kb`` KB, made once and kept in ``work``."""
    run = work / f"run-{n}x{image_kb}kb"
    done = run / "made.json"
    if done.is_file():
        return run, f"{n:,} x {image_kb} KB folder reused ({run})"
    shutil.rmtree(run, ignore_errors=True)
    made = make_run(run, n, jobs_file=False, image_kb=image_kb)
    done.write_text(orjson.dumps({"n": n, "image_kb": image_kb}).decode())
    return run, f"{n:,} x {image_kb} KB folder made in {made:.0f} s ({run})"


def floor_rounds(args: argparse.Namespace) -> None:
    """batchgen's parquet export against bench/parquet_floor.py, interleaved rounds."""
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.workdir or ROOT / "bench" / "work" / "export-floor"
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    started = time.monotonic()
    rows, notes = [], []
    for n in sizes:
        run, note = cached_run(work, n, args.image_kb)
        notes.append(note)
        print(note, flush=True)
        gb = du(run / "images") / 1e3
        ratios, ours, floors, rss_b, rss_f = [], [], [], [], []
        for r in range(args.rounds):
            out = work / f"out-{n}"
            shutil.rmtree(out, ignore_errors=True)
            wall_b, rb, _ = timed_export(run, "parquet", out, split=False)
            shutil.rmtree(out, ignore_errors=True)
            floor_out = work / f"floor-{n}.parquet"
            wall_f, rf, _ = timed_child(
                [sys.executable, str(ROOT / "bench" / "parquet_floor.py"), str(run),
                 str(floor_out)], "parquet floor")
            floor_out.unlink(missing_ok=True)
            ours.append(wall_b)
            floors.append(wall_f)
            rss_b.append(rb)
            rss_f.append(rf)
            ratios.append(wall_b / wall_f)
            print(f"  {n:,} round {r + 1}: batchgen {wall_b:.1f} s ({rb:.0f} MB), floor "
                  f"{wall_f:.1f} s ({rf:.0f} MB): {ratios[-1]:.2f}x; load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
        ratio = statistics.median(ours) / statistics.median(floors)
        verdict = "PASS" if ratio <= 1.15 else "MISS"
        rows.append(
            f"| export parquet, {n:,} x {args.image_kb / 1024:.0f} MB ({gb:.1f} GB) | "
            f"median {statistics.median(ours):.1f} s, peak RSS {max(rss_b):.0f} MB | "
            f"pyarrow script {statistics.median(floors):.1f} s, {max(rss_f):.0f} MB | "
            f"{ratio:.2f}x (per round {', '.join(f'{x:.2f}' for x in ratios)}; min "
            f"{min(ratios):.2f}) | <= 1.15x, flat | {verdict} |")
    section = "\n".join([
        FLOOR_BEGIN,
        "## At realistic sizes: Parquet export of 1 MB images (`bench/export.py --floor`, "
        "issue 25)",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at the "
        f"start {' '.join(f'{x:.2f}' for x in load)}, at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 shared cores)",
        f"- command: `.venv/bin/python bench/export.py --floor {' '.join(sys.argv[2:])}`"
        f" ({time.monotonic() - started:.0f} s)",
        "- SYNTHETIC folders of distinct random-pixel PNGs (incompressible), 2% failed jobs; "
        "batchgen exports without `--split`; the floor is `bench/parquet_floor.py` (orjson "
        "per ledger line, one pyarrow `ParquetWriter` on a path, row groups of 100 rows or "
        "64 MB); rounds interleaved, ratio of medians; peak RSS from `os.wait4`",
        "",
        "| work | batchgen | floor | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *[f"- {n}" for n in notes],
        FLOOR_END,
    ])
    print(section)
    if not args.no_write:
        write_section(section, FLOOR_BEGIN, FLOOR_END, RESULTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--floor", action="store_true",
                    help="parquet only, against bench/parquet_floor.py, in --rounds rounds")
    ap.add_argument("--image-kb", type=int, default=1024, help="with --floor: image size")
    ap.add_argument("--rounds", type=int, default=3, help="with --floor")
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated image counts")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--jobs-file", action="store_true", help="also write DIR/jobs.jsonl")
    ap.add_argument("--workdir", type=Path, help="keep the folders here (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = ap.parse_args()
    if args.floor:
        floor_rounds(args)
        return
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
