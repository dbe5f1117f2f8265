"""Batch mode at scale: submit and collect N small jobs against the fake server's Batch API.

    .venv/bin/python bench/batch.py [--jobs 100000] [--also 10000] [--batch-size 1000]

Starts ``batchgen fake-server`` in its own process (batches finish ``--batch-seconds`` after
they are created), then runs the real CLI twice, as a user would: ``run --mode batch`` (plan,
write request lines, upload, create; exits 5) and ``run --mode batch --wait`` (poll, stream each
results file into the store and ledger). Each child's wall time and peak RSS (wait4 rusage) are
recorded, with the fake's count of bytes uploaded. ``--also N`` repeats everything with N jobs,
so the peak memory at two sizes shows whether it stays flat. Prints a Markdown section for
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
KEY = "bench-key"


@dataclass
class Child:
    wall_s: float
    maxrss_mb: float
    code: int
    stderr: str


def run_child(cmd: list[str], env: dict[str, str]) -> Child:
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Child(wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), text)


class Server:
    def __init__(self, batch_seconds: float) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "batchgen", "fake-server", "--port", "0", "--key", KEY],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = line.strip().rsplit(" ", 1)[-1]
        self.post("/_fake/config", {"batch_seconds": batch_seconds})

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            return json.loads(resp.read() or b"{}")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_fake/stats") as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def write_manifest(path: Path, jobs: int) -> None:
    with path.open("w") as fh:
        for i in range(jobs):
            fh.write(json.dumps({"prompt": f"bench image {i}: a small red cube"}) + "\n")


def measure(jobs: int, batch_size: int, batch_seconds: float, work: Path) -> dict[str, Any]:
    server = Server(batch_seconds)
    try:
        manifest = work / f"batch-{jobs}.jsonl"
        write_manifest(manifest, jobs)
        out = work / f"out-{jobs}"
        env = {**os.environ, "BATCHGEN_API_KEY": KEY}
        base = [PY, "-m", "batchgen", "run", str(manifest), "--out", str(out), "--provider",
                "google", "--base-url", server.url, "--mode", "batch", "--no-progress",
                "--no-gallery", "--batch-size", str(batch_size), "--poll-interval", "0.5"]
        submit = run_child(base, env)
        collect = run_child([*base, "--wait"], env)
        stats = server.stats()
        with (out / "ledger.jsonl").open("rb") as fh:
            done = sum(1 for line in fh if b'"succeeded"' in line)
    finally:
        server.stop()
    return {
        "jobs": jobs, "batch_size": batch_size, "submit": submit, "collect": collect,
        "succeeded": done, "bytes_uploaded": stats.get("bytes_uploaded"),
        "files_uploaded": stats.get("files_uploaded"),
        "batches_created": stats.get("batches_created"),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--also", type=int, default=10_000, help="a smaller run, for flatness")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--batch-seconds", type=float, default=1.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="batchgen-bench-batch-"))
    rows = []
    try:
        for n in [x for x in (args.also, args.jobs) if x]:
            r = measure(n, args.batch_size, args.batch_seconds, work)
            rows.append(r)
            s, c = r["submit"], r["collect"]
            print(f"{n} jobs: submit {s.wall_s:.1f}s ({s.maxrss_mb:.0f} MB, exit {s.code}), "
                  f"collect {c.wall_s:.1f}s ({c.maxrss_mb:.0f} MB, exit {c.code}), "
                  f"{r['succeeded']} succeeded, {r['batches_created']} batches, "
                  f"{r['bytes_uploaded']} bytes uploaded", file=sys.stderr)
            if c.code != 0:
                print(c.stderr[-2000:], file=sys.stderr)
            # Removing 2 x N files is slow on a disk with discard: after the figures, not in them.
            shutil.rmtree(work / f"out-{n}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n## Batch mode (`bench/batch.py`)\n\n- date: {date}"
          f"; load average at the end: {load} (the machine is shared)\n"
          f"- batches of {args.batch_size} jobs; the fake finishes each {args.batch_seconds:g} s "
          "after its create; small images\n")
    print("| jobs | submit (plan, write, upload, create) | collect (`--wait`: poll, stream, save) "
          "| succeeded | batches | bytes uploaded | bytes per job |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s, c = r["submit"], r["collect"]
        per = r["bytes_uploaded"] / r["jobs"] if r["bytes_uploaded"] else 0
        print(f"| {r['jobs']:,} | {s.wall_s:.1f} s, peak RSS {s.maxrss_mb:.0f} MB | "
              f"{c.wall_s:.1f} s, peak RSS {c.maxrss_mb:.0f} MB | {r['succeeded']:,} | "
              f"{r['batches_created']} | {r['bytes_uploaded']:,} | {per:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
