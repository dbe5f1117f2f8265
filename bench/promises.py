"""What issue 10's durability costs: intents fsync'd before each send, the ledger fsync'd once per
batch of lines, the images directory fsync'd once per store commit.

    .venv/bin/python bench/promises.py [--jobs 400] [--concurrency 16] [--reps 3]

Runs the real CLI (bench/timed_batchgen.py, which times the run phase) against the fake server
(its own process, no latency: the worst case, where nothing hides the fsyncs), alternately with
those syncs and with them stubbed out (``BENCH_NO_PROMISE_SYNCS=1``, a diagnostic), and prints
the median run phase of each and the cost per image. A second pair runs with 0.5 s answers to
show the latency a request pays for its intent's fsync.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PY = sys.executable
KEY = "fake-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [PY, "-m", "batchgen", "fake-server", "--port", str(port), "--key", KEY,
         "--latency", str(latency)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/_fake/stats", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the fake server did not start")


def one_run(url: str, manifest: Path, work: Path, concurrency: int, syncs: bool) -> float:
    out = work / f"run-{time.monotonic_ns()}"
    result = work / "result.json"
    env = {**os.environ, "BATCHGEN_API_KEY": KEY, "BENCH_RESULT": str(result),
           "BENCH_NO_PROMISE_SYNCS": "0" if syncs else "1"}
    cmd = [PY, str(BENCH / "timed_batchgen.py"), "run", str(manifest), "--out", str(out),
           "--base-url", url, "--no-progress", "--no-gallery", "--concurrency",
           str(concurrency), "--yes"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    run_s = float(json.loads(result.read_text())["run_s"])
    shutil.rmtree(out)
    return run_s


def measure(latency: float, jobs: int, concurrency: int, reps: int, work: Path) -> dict[str, float]:
    manifest = work / f"m-{latency}.jsonl"
    manifest.write_text("".join(json.dumps({"prompt": f"durable {latency} {i}"}) + "\n"
                                for i in range(jobs)))
    server, url = start_server(latency)
    try:
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(reps):
            for syncs in (True, False):  # alternate, so machine load hits both alike
                times[syncs].append(one_run(url, manifest, work, concurrency, syncs))
    finally:
        server.terminate()
        server.wait()
    with_s, without_s = statistics.median(times[True]), statistics.median(times[False])
    return {
        "latency_s": latency, "jobs": jobs, "with_s": with_s, "without_s": without_s,
        "with_img_s": jobs / with_s, "without_img_s": jobs / without_s,
        "cost_ms_per_image": (with_s - without_s) / jobs * 1000,
        "with_runs": times[True], "without_runs": times[False],  # type: ignore[dict-item]
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=BENCH) as tmp:
        work = Path(tmp)
        fast = measure(0.0, args.jobs, args.concurrency, args.reps, work)
        slow = measure(0.5, 64, args.concurrency, args.reps, work)
    for r in (fast, slow):
        print(
            f"latency {r['latency_s']:.1f}s, {r['jobs']} jobs, concurrency {args.concurrency}: "
            f"with the promise syncs {r['with_s']:.2f}s ({r['with_img_s']:.0f} img/s), "
            f"without {r['without_s']:.2f}s ({r['without_img_s']:.0f} img/s): "
            f"{r['cost_ms_per_image']:+.2f} ms per image; runs {r['with_runs']} vs "
            f"{r['without_runs']}"
        )


if __name__ == "__main__":
    main()
