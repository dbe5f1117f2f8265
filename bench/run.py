"""batchgen's benchmark: one command, four scenarios, against the fake server on loopback.

    .venv/bin/python bench/run.py            # everything (a few minutes), writes bench/RESULTS.md
    .venv/bin/python bench/run.py --only throughput,latency --reps 1

The fake server runs in its own process (``python -m batchgen fake-server --port 0``), configured
between scenarios through ``POST /_fake/config`` and ``POST /_fake/reset``. Every client runs in
its own process too, started with ``os.wait4`` so each one's peak RSS is its own. See
bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
PY = sys.executable
KEY = "fake-key"
MB = 1_000_000

# The brief's numbers; each scenario takes seconds on a 2-core machine.
THROUGHPUT_JOBS, THROUGHPUT_CONCURRENCY = 600, 32
LATENCY_JOBS, LATENCY_CONCURRENCY, LATENCY_S = 200, 20, 0.5
MEMORY_JOBS, MEMORY_CONCURRENCY, MEMORY_IMAGE_BYTES = (40, 160), 8, 4_000_000
PLAN_ROWS = 1_000_000

# Targets.
MAX_VS_BARE = 1.25
MAX_LATENCY_OVERHEAD = 0.05
MAX_MEMORY_GROWTH = 0.10
# Least a non-streaming client holds per in-flight job: the base64 body and the decoded image.
PER_JOB_FOOTPRINT = 4 / 3 + 1
MAX_PLAN_S, MAX_PLAN_RSS = 10.0, 1_000 * MB

SCENARIOS = ("throughput", "latency", "memory", "planning")


# -- results -------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    measure: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: informational

    @property
    def verdict(self) -> str:
        return "info" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> None:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(f"  {row.measure}: {row.value}  [{row.verdict}]", flush=True)

    def note(self, line: str) -> None:
        self.details.append(line)
        print(f"    {line}", flush=True)

    def table(self) -> str:
        head = ["scenario", "measure", "result", "target", "verdict"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lines.append(f"| {r.scenario} | {r.measure} | {r.value} | {r.target} | {r.verdict} |")
        return "\n".join(lines)


def mb(n: float) -> str:
    return f"{n / MB:.0f} MB"


# -- child processes -----------------------------------------------------------------------


@dataclass
class Child:
    wall_s: float
    maxrss: int  # bytes
    code: int
    result: dict[str, Any]
    stderr: str


def run_child(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600) -> Child:
    """Run ``cmd`` to completion; its own peak RSS comes from wait4's rusage."""
    result_path = WORK / f"result-{os.getpid()}-{time.monotonic_ns()}.json"
    full_env = {**os.environ, **(env or {}), "BENCH_RESULT": str(result_path)}
    cmd = [str(c).replace("{result}", str(result_path)) for c in cmd]
    err_path = result_path.with_suffix(".err")
    with err_path.open("wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text(errors="replace")
    err_path.unlink(missing_ok=True)
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {}
    result_path.unlink(missing_ok=True)
    return Child(wall, usage.ru_maxrss * 1024, proc.returncode, result, stderr)


def fresh_dir(name: str) -> Path:
    path = WORK / "tmp" / name
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_manifest(name: str, jobs: int) -> Path:
    path = WORK / f"{name}-{jobs}.jsonl"
    with path.open("w") as fh:
        for i in range(jobs):
            prompt = f"bench image {i}: a small test scene with a red cube"
            fh.write(json.dumps({"prompt": prompt, "aspect_ratio": "1:1"}) + "\n")
    return path


def ledger_lines(out: Path) -> int:
    try:
        with (out / "ledger.jsonl").open("rb") as fh:
            return sum(1 for line in fh if b'"succeeded"' in line)
    except FileNotFoundError:
        return 0


# -- the fake server -----------------------------------------------------------------------


class Server:
    """``batchgen fake-server`` in its own process, so it shares no GIL or loop with a client."""

    def __init__(self) -> None:
        self.log = (WORK / "fake-server.log").open("wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "batchgen", "fake-server", "--port", "0", "--key", KEY],
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(f"the fake server did not start: {line!r}")
        self.url = line.rsplit("listening on ", 1)[1].strip()
        self.ps = psutil.Process(self.proc.pid)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def configure(self, latency_s: float = 0.0, image_bytes: int | None = None) -> None:
        self._post(
            "/_fake/config",
            {"latency_s": latency_s, "image_bytes": image_bytes, "full_size": False, "faults": {}},
        )
        self._post("/_fake/reset", {})

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_fake/stats", timeout=30) as resp:
            stats: dict[str, Any] = json.loads(resp.read())
            return stats

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- the three clients ---------------------------------------------------------------------


@dataclass
class Measured:
    run_s: float  # the run phase, timed inside the child
    wall_s: float  # the whole process: interpreter, imports, planning, run
    maxrss: int
    server_cpu_s: float
    images: int
    prepare_s: float = 0.0


def batchgen_cmd(manifest: Path, out: Path, url: str, concurrency: int) -> list[str]:
    return [
        PY, str(BENCH / "timed_batchgen.py"), "run", str(manifest), "--out", str(out),
        "--base-url", url, "--no-progress", "--concurrency", str(concurrency), "--yes",
    ]  # fmt: skip


def run_batchgen(
    server: Server, manifest: Path, jobs: int, concurrency: int, *, fsync: bool = True
) -> Measured:
    out = fresh_dir("batchgen")
    env = {"BATCHGEN_API_KEY": KEY, "BENCH_NO_FSYNC": "0" if fsync else "1"}
    server._post("/_fake/reset", {})
    cpu0 = server.cpu_s()
    child = run_child(batchgen_cmd(manifest, out, server.url, concurrency), env)
    cpu = server.cpu_s() - cpu0
    images = ledger_lines(out)
    if child.code != 0 or images != jobs or "run_s" not in child.result:
        raise RuntimeError(f"batchgen run failed ({child.code}, {images}/{jobs}): {child.stderr}")
    shutil.rmtree(out, ignore_errors=True)
    return Measured(
        child.result["run_s"], child.wall_s, child.maxrss, cpu, images, child.result["prepare_s"]
    )


def run_reference(
    kind: str, server: Server, manifest: Path, jobs: int, concurrency: int
) -> Measured:
    out = fresh_dir(kind)
    cmd = [
        PY, str(BENCH / "clients.py"), kind, "--manifest", str(manifest), "--url", server.url,
        "--out", str(out), "--concurrency", str(concurrency), "--result", "{result}",
    ]  # fmt: skip
    server._post("/_fake/reset", {})
    cpu0 = server.cpu_s()
    child = run_child(cmd)
    cpu = server.cpu_s() - cpu0
    images = int(child.result.get("images", 0))
    if child.code != 0 or images != jobs:
        raise RuntimeError(f"{kind} client failed ({child.code}, {images}/{jobs}): {child.stderr}")
    shutil.rmtree(out, ignore_errors=True)
    return Measured(child.result["run_s"], child.wall_s, child.maxrss, cpu, images)


def median_of(runs: list[Measured], key: Callable[[Measured], float]) -> float:
    return statistics.median(key(r) for r in runs)


# -- scenarios -----------------------------------------------------------------------------


def scenario_throughput(server: Server, report: Report, reps: int) -> None:
    jobs, conc = THROUGHPUT_JOBS, THROUGHPUT_CONCURRENCY
    print(f"\n[1] throughput: {jobs} jobs, concurrency {conc}, small images, no latency")
    server.configure()
    manifest = write_manifest("throughput", jobs)
    names = ("batchgen", "bare", "sdk", "batchgen-nofsync")
    runs: dict[str, list[Measured]] = {k: [] for k in names}
    # Interleaved, so drift (page cache, CPU boost) spreads over every client alike.
    for _ in range(reps):
        runs["bare"].append(run_reference("bare", server, manifest, jobs, conc))
        runs["batchgen"].append(run_batchgen(server, manifest, jobs, conc))
        runs["sdk"].append(run_reference("sdk", server, manifest, jobs, conc))
        runs["batchgen-nofsync"].append(run_batchgen(server, manifest, jobs, conc, fsync=False))
    t = {k: median_of(v, lambda m: m.run_s) for k, v in runs.items()}
    rss = {k: median_of(v, lambda m: m.maxrss) for k, v in runs.items()}
    cpu = {k: median_of(v, lambda m: m.server_cpu_s) for k, v in runs.items()}
    wall = {k: median_of(v, lambda m: m.wall_s) for k, v in runs.items()}
    label = {
        "batchgen": "batchgen (CLI, fsync per image + sidecar + ledger)",
        "bare": "bare aiohttp + semaphore (no fsync, no ledger)",
        "sdk": "google-genai SDK aio + semaphore",
        "batchgen-nofsync": "batchgen with fsync stubbed out (diagnostic only)",
    }
    for k in ("batchgen", "bare", "sdk", "batchgen-nofsync"):
        report.add(
            "1 throughput",
            label[k],
            f"{jobs / t[k]:.0f} img/s ({t[k]:.2f} s), peak RSS {mb(rss[k])}",
        )
        report.note(
            f"{k}: run phase {[round(m.run_s, 3) for m in runs[k]]} s, whole process "
            f"{wall[k]:.2f} s, fake server CPU {cpu[k]:.2f} s ({cpu[k] / t[k]:.0%} of one core)"
        )
    ratio = t["batchgen"] / t["bare"]
    report.add(
        "1 throughput",
        "batchgen time / bare loop time",
        f"{ratio:.2f}x",
        f"<= {MAX_VS_BARE:.2f}x",
        ratio <= MAX_VS_BARE,
    )
    report.add(
        "1 throughput",
        "batchgen time / SDK time",
        f"{t['batchgen'] / t['sdk']:.2f}x",
        "< 1.00x (ahead of the SDK)",
        t["batchgen"] < t["sdk"],
    )


def scenario_latency(server: Server, report: Report) -> None:
    jobs, conc, lat = LATENCY_JOBS, LATENCY_CONCURRENCY, LATENCY_S
    ideal = jobs / conc * lat
    print(f"\n[2] latency-bound: {jobs} jobs, concurrency {conc}, server latency {lat} s")
    server.configure(latency_s=lat)
    manifest = write_manifest("latency", jobs)
    m = run_batchgen(server, manifest, jobs, conc)
    bare = run_reference("bare", server, manifest, jobs, conc)
    server.configure()
    over = m.run_s / ideal - 1
    report.add(
        "2 latency",
        f"batchgen run phase vs ideal {jobs}/{conc} x {lat} s = {ideal:.2f} s",
        f"{m.run_s:.2f} s ({over:+.1%})",
        f"<= +{MAX_LATENCY_OVERHEAD:.0%}",
        over <= MAX_LATENCY_OVERHEAD,
    )
    report.note(
        f"bare loop, same load: {bare.run_s:.2f} s ({bare.run_s / ideal - 1:+.1%}); "
        f"batchgen whole process {m.wall_s:.2f} s (planning {m.prepare_s:.2f} s)"
    )


def scenario_memory(server: Server, report: Report) -> None:
    conc, size = MEMORY_CONCURRENCY, MEMORY_IMAGE_BYTES
    small, large = MEMORY_JOBS
    print(f"\n[3] memory: {size / MB:.0f} MB images, concurrency {conc}, {small} and {large} jobs")
    server.configure()
    base = run_batchgen(server, write_manifest("memory", small), small, conc)
    server.configure(image_bytes=size)
    peak: dict[int, Measured] = {}
    for jobs in (small, large):
        peak[jobs] = run_batchgen(server, write_manifest("memory", jobs), jobs, conc)
    server.configure()
    growth = peak[large].maxrss / peak[small].maxrss - 1
    bound = base.maxrss + conc * PER_JOB_FOOTPRINT * size
    worst = max(p.maxrss for p in peak.values())
    per_job = (worst - base.maxrss) / conc / size
    report.add("3 memory", f"baseline: {small} small images", f"peak RSS {mb(base.maxrss)}")
    report.add(
        "3 memory",
        f"peak RSS, {small} jobs -> {large} jobs",
        f"{mb(peak[small].maxrss)} -> {mb(peak[large].maxrss)} ({growth:+.0%})",
        f"flat: <= +{MAX_MEMORY_GROWTH:.0%}",
        growth <= MAX_MEMORY_GROWTH,
    )
    report.add(
        "3 memory",
        "peak RSS vs baseline + C x (base64 body + image)",
        f"{mb(worst)} ({per_job:.1f} x image size per in-flight job)",
        f"<= {mb(bound)} ({PER_JOB_FOOTPRINT:.1f} x per job)",
        worst <= bound,
    )
    for jobs, m in peak.items():
        report.note(f"{jobs} jobs: run phase {m.run_s:.2f} s, {jobs * size / MB / m.run_s:.0f} MB/s")


def scenario_planning(server: Server, report: Report) -> None:
    rows = PLAN_ROWS
    print(f"\n[4] planning: {rows:,}-row manifest against a {rows:,}-line ledger")
    folder = WORK / f"plan-{rows}"
    t0 = time.perf_counter()
    fx = subprocess.run(
        [PY, str(BENCH / "planning.py"), "fixture", "--dir", str(folder), "--rows", str(rows)],
        cwd=ROOT,
        check=True,
    )
    del fx
    report.note(f"fixture ready in {time.perf_counter() - t0:.1f} s (cached under {folder})")
    manifest, ledger = folder / "manifest.jsonl", folder / "ledger.jsonl"
    child = run_child(
        [PY, str(BENCH / "planning.py"), "plan", "--manifest", str(manifest),
         "--ledger", str(ledger), "--result", "{result}"]
    )  # fmt: skip
    r = child.result
    if child.code != 0 or "total_s" not in r:
        raise RuntimeError(f"planning child failed: {child.stderr}")
    report.add(
        "4 planning",
        "validate + read_index + Plan.count",
        f"{r['total_s']:.1f} s",
        f"< {MAX_PLAN_S:.0f} s",
        r["total_s"] < MAX_PLAN_S,
    )
    report.add(
        "4 planning",
        "peak RSS of that process",
        mb(child.maxrss),
        f"< {mb(MAX_PLAN_RSS)}",
        child.maxrss < MAX_PLAN_RSS,
    )
    report.note(
        f"validate {r['validate_s']:.1f} s, read_index {r['read_index_s']:.1f} s, "
        f"count {r['count_s']:.1f} s; plan: {r['done']:,} done, {r['pending']:,} pending, "
        f"{r['failed_skipped']:,} failed and skipped"
    )
    # The real command: everything before the first request, then one image.
    out = fresh_dir("plan-run")
    out.mkdir(parents=True)
    shutil.copyfile(ledger, out / "ledger.jsonl")
    server.configure()
    cmd = batchgen_cmd(manifest, out, server.url, 8) + ["--limit", "1"]
    run = run_child(cmd, {"BATCHGEN_API_KEY": KEY})
    shutil.rmtree(out, ignore_errors=True)
    if run.code != 0 or "prepare_s" not in run.result:
        raise RuntimeError(f"batchgen run --limit 1 failed ({run.code}): {run.stderr}")
    report.add(
        "4 planning",
        "`batchgen run --limit 1` on that folder: whole process",
        f"{run.wall_s:.1f} s, peak RSS {mb(run.maxrss)}",
        f"< {MAX_PLAN_S:.0f} s, < {mb(MAX_PLAN_RSS)}",
        run.wall_s < MAX_PLAN_S and run.maxrss < MAX_PLAN_RSS,
    )
    report.note(
        f"batchgen run --limit 1: prepare {run.result['prepare_s']:.1f} s, "
        f"run phase {run.result.get('run_s', 0.0):.1f} s"
    )


# -- the report ----------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {ram:.1f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


NOTES_MARK = "## Notes"


def write_results(report: Report, started: dt.datetime, elapsed: float, partial: bool) -> None:
    path = BENCH / "RESULTS.md"
    kept = ""
    if path.exists():
        text = path.read_text()
        if NOTES_MARK in text:
            kept = text[text.index(NOTES_MARK) :]
    body = [
        "# Benchmark results",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/run.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`"
        f" ({elapsed:.0f} s{', partial run' if partial else ''})",
        "",
        report.table(),
        "",
        "Details:",
        "",
        *[f"- {d}" for d in report.details],
        "",
    ]
    if kept:
        body.append(kept.rstrip() + "\n")
    path.write_text("\n".join(body))


def main() -> int:
    ap = argparse.ArgumentParser(description="batchgen benchmark against the fake server")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--reps", type=int, default=3, help="throughput repetitions (median)")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite bench/RESULTS.md")
    args = ap.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    WORK.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    print(f"machine: {machine()}")
    report = Report()
    server = Server()
    try:
        print(f"fake server: {server.url} (pid {server.proc.pid})")
        if "throughput" in chosen:
            scenario_throughput(server, report, args.reps)
        if "latency" in chosen:
            scenario_latency(server, report)
        if "memory" in chosen:
            scenario_memory(server, report)
        if "planning" in chosen:
            scenario_planning(server, report)
    finally:
        server.stop()
        shutil.rmtree(WORK / "tmp", ignore_errors=True)
    elapsed = time.perf_counter() - t0
    print(f"\n{report.table()}\n\n({elapsed:.0f} s)")
    if not args.no_write:
        write_results(report, started, elapsed, partial=len(chosen) < len(SCENARIOS))
        print(f"written: {BENCH / 'RESULTS.md'}")
    return 0 if all(r.ok is not False for r in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
