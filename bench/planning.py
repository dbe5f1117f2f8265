"""The planning scenario's fixture and its timed child.

    python bench/planning.py fixture --dir bench/work/plan-1000000 --rows 1000000
    python bench/planning.py plan --manifest M.jsonl --ledger L.jsonl --result R.json

``fixture`` writes a JSONL manifest of simple prompts and a ledger with one line per job in the
real :class:`batchgen.ledger.LedgerRecord` format: 90% succeeded, 6% failed and retryable (so
they are planned again), 4% failed permanently (skipped). Job ids come from iterating the real
:class:`batchgen.manifest.Manifest` once. ``fixture.json`` records what was made, with the first
job ids, so a later run reuses the files only while batchgen still derives the same ids.

``csv`` writes a 1,000,000-row dataset CSV (id, prompt, ratio, size, two ``meta.`` columns);
``floor-status`` and ``floor-csv`` are the floors bench/scale.py sets beside ``status`` and
``validate`` / ``run --limit 1``.

``plan`` does what ``batchgen run`` does before its first request: ``read_index(ledger)``, then
``Manifest.validate(visit=plan.count_job)`` (validation and plan counting in one pass),
each timed, in a fresh process whose peak RSS the parent reads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import orjson

FIXTURE_VERSION = 1
SUCCEEDED_PER_100 = 90
RETRYABLE_PER_100 = 6  # the rest of each hundred failed permanently
CHECK_IDS = 5


def manifest_row(i: int) -> bytes:
    subject = ("fox", "teapot", "lighthouse", "bicycle", "owl", "cactus", "violin")[i % 7]
    return orjson.dumps({"prompt": f"a small watercolor of a {subject}, study number {i}"}) + b"\n"


def first_ids(manifest: Path, n: int = CHECK_IDS) -> list[str]:
    from batchgen.manifest import Manifest

    return [job.job_id for job in itertools.islice(Manifest(manifest).iter_jobs(), n)]


def fixture_ok(folder: Path, rows: int) -> bool:
    meta_path = folder / "fixture.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("version") != FIXTURE_VERSION or meta.get("rows") != rows:
        return False
    if not (folder / "manifest.jsonl").is_file() or not (folder / "ledger.jsonl").is_file():
        return False
    # The ledger is only a fixture while batchgen still gives these rows the same ids.
    return bool(first_ids(folder / "manifest.jsonl") == meta.get("first_ids"))


def _record(job_id: str, prompt: str, i: int) -> Any:
    from batchgen.folder.ledger import ErrorInfo, JobStatus, LedgerRecord

    slot = i % 100
    base: dict[str, Any] = {
        "job_id": job_id,
        "prompt": prompt,
        "attempts": 1,
        "model": "gemini-3-pro-image",
        "image_size": "1K",
        "aspect_ratio": None,
        "started_at": "2026-06-01T12:00:00.000+00:00",
        "finished_at": "2026-06-01T12:00:21.337+00:00",
        "latency_s": 21.337,
    }
    if slot < SUCCEEDED_PER_100:
        return LedgerRecord(
            status=JobStatus.SUCCEEDED,
            outputs=(f"images/{job_id}.png",),
            usage={
                "promptTokenCount": 14,
                "candidatesTokenCount": 1120,
                "totalTokenCount": 1398,
                "thoughtsTokenCount": 264,
                "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}],
            },
            cost_usd=0.137568,
            width=1024,
            height=1024,
            mime_type="image/png",
            sha256=f"{i:064x}",
            **base,
        )
    if slot < SUCCEEDED_PER_100 + RETRYABLE_PER_100:
        error = ErrorInfo("server_error", True, 503, "The model is overloaded. Try again later.")
    else:
        error = ErrorInfo("blocked", False, 200, "prompt blocked: SAFETY")
    return LedgerRecord(status=JobStatus.FAILED, error=error, **{**base, "attempts": 6})


def make_fixture(folder: Path, rows: int) -> None:
    from batchgen.manifest import Manifest

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fixture.json").unlink(missing_ok=True)
    manifest = folder / "manifest.jsonl"
    t0 = time.perf_counter()
    with manifest.open("wb") as fh:
        for i in range(rows):
            fh.write(manifest_row(i))
    t1 = time.perf_counter()
    ids: list[str] = []
    ledger_tmp = folder / "ledger.jsonl.tmp"
    with ledger_tmp.open("wb") as fh:
        for i, job in enumerate(Manifest(manifest).iter_jobs()):
            if i < CHECK_IDS:
                ids.append(job.job_id)
            fh.write(_record(job.job_id, job.prompt, i).to_line())
    ledger_tmp.replace(folder / "ledger.jsonl")
    t2 = time.perf_counter()
    meta = {"version": FIXTURE_VERSION, "rows": rows, "first_ids": ids}
    (folder / "fixture.json").write_text(json.dumps(meta))
    print(f"  fixture: manifest {t1 - t0:.1f}s, ids + ledger {t2 - t1:.1f}s", flush=True)


def plan(manifest_path: Path, ledger: Path, result: Path) -> None:
    from batchgen.manifest import Manifest
    from batchgen.planning.plan import Plan, read_index
    from batchgen.pricing import PriceTable
    from batchgen.settings import Selection

    # As `batchgen run` does it: the ledger index first, then one pass over the manifest that
    # validates every row and counts the plan.
    t0 = time.perf_counter()
    index = read_index(ledger)
    t1 = time.perf_counter()
    manifest = Manifest(manifest_path)
    plan = Plan(manifest.iter_jobs, index, Selection(), PriceTable.load(None).estimate)
    summary = manifest.validate(visit=plan.count_job)
    counts = plan.counts
    t2 = time.perf_counter()
    out = {
        "read_index_s": t1 - t0,
        "validate_count_s": t2 - t1,
        "total_s": t2 - t0,
        "jobs": summary.jobs,
        "done": counts.done,
        "pending": counts.pending,
        "failed_skipped": counts.failed_skipped,
    }
    result.write_text(json.dumps(out))


CSV_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16")


def make_csv(path: Path, rows: int) -> None:
    """A dataset CSV: an id, a prompt, a ratio, a size and two metadata columns per row."""
    import csv

    if path.is_file() and path.with_suffix(".rows").is_file() and \
            path.with_suffix(".rows").read_text() == str(rows):
        print("  csv fixture: cached", flush=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    subjects = ("fox", "teapot", "lighthouse", "bicycle", "owl", "cactus", "violin")
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "prompt", "aspect_ratio", "image_size", "meta.sku", "meta.weight"])
        for i in range(rows):
            w.writerow([f"item-{i}", f"a studio product photo of a {subjects[i % 7]} on a white "
                        f"background, soft shadows, number {i}", CSV_RATIOS[i % 5], "1K",
                        f"SKU-{i:07d}", f"{i / 7:.3f}"])
    path.with_suffix(".rows").write_text(str(rows))


def floor_status(ledger: Path) -> None:
    """``status``'s floor: orjson per line, the last status per job, the spend summed."""
    latest: dict[str, str] = {}
    cost = 0.0
    with ledger.open("rb") as fh:
        for raw in fh:
            d = orjson.loads(raw)
            latest[d["job_id"]] = d["status"]
            cost += d.get("cost_usd") or 0.0
    print(len(latest), sum(v == "succeeded" for v in latest.values()), round(cost, 2))


def floor_csv(path: Path) -> None:
    """``validate``'s floor: csv rows, and a sha256 of each (the job id's hash)."""
    import csv
    import hashlib

    n = 0
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            hashlib.sha256(orjson.dumps(row)).hexdigest()
            n += 1
    print(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    cs = sub.add_parser("csv")
    cs.add_argument("--path", type=Path, required=True)
    cs.add_argument("--rows", type=int, required=True)
    sub.add_parser("floor-status").add_argument("ledger", type=Path)
    sub.add_parser("floor-csv").add_argument("csv", type=Path)
    fx = sub.add_parser("fixture")
    fx.add_argument("--dir", type=Path, required=True)
    fx.add_argument("--rows", type=int, required=True)
    pl = sub.add_parser("plan")
    pl.add_argument("--manifest", type=Path, required=True)
    pl.add_argument("--ledger", type=Path, required=True)
    pl.add_argument("--result", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "csv":
        make_csv(args.path, args.rows)
    elif args.cmd == "floor-status":
        floor_status(args.ledger)
    elif args.cmd == "floor-csv":
        floor_csv(args.csv)
    elif args.cmd == "fixture":
        if fixture_ok(args.dir, args.rows):
            print("  fixture: cached", flush=True)
        else:
            make_fixture(args.dir, args.rows)
    else:
        plan(args.manifest, args.ledger, args.result)


if __name__ == "__main__":
    main()
