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
import math
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

import psutil  # type: ignore[import-untyped, unused-ignore]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
PY = sys.executable
KEY = "fake-key"
MB = 1_000_000
SHM = Path("/dev/shm")

# The brief's numbers; each scenario takes seconds on a 2-core machine.
THROUGHPUT_JOBS, THROUGHPUT_CONCURRENCY = 600, 32
LATENCY_JOBS, LATENCY_CONCURRENCY, LATENCY_S = 200, 20, 0.5
# Generation-like latency: 20 rounds of 2 s, where the first-answer gate's release time shows.
LONG_LATENCY_JOBS, LONG_LATENCY_S = 400, 2.0
MEMORY_JOBS, MEMORY_CONCURRENCY, MEMORY_IMAGE_BYTES = (40, 160), 8, 4_000_000
PLAN_ROWS = 1_000_000

# Targets.
MAX_VS_BARE = 1.25
MAX_LATENCY_OVERHEAD = 0.05
MAX_MEMORY_GROWTH = 0.10
# Least a non-streaming client holds per in-flight job: the base64 body and the decoded image.
PER_JOB_FOOTPRINT = 4 / 3 + 1
MAX_PLAN_S, MAX_PLAN_RSS = 10.0, 1_000 * MB

SCENARIOS = ("throughput", "latency", "memory", "planning", "latency_long", "pacing")


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
    tables: list[str] = field(default_factory=list)  # extra tables, e.g. the pacing table

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
    cpu_s: float  # user + system, every thread of the process
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
    cpu = usage.ru_utime + usage.ru_stime
    return Child(wall, usage.ru_maxrss * 1024, cpu, proc.returncode, result, stderr)


_dirs = 0


def fresh_dir(name: str, root: Path | None = None) -> Path:
    """A new run folder. Folders are removed per scenario (:func:`clean`), not per run: on this
    kind of disk (ext4 with ``discard``) deleting a thousand files slows the next run's fsyncs."""
    global _dirs
    _dirs += 1
    path = (root or WORK / "tmp") / f"{name}-{os.getpid()}-{_dirs}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def clean() -> None:
    for root in (WORK / "tmp", SHM / "batchgen-bench"):
        shutil.rmtree(root, ignore_errors=True)
    settle()


def settle() -> None:
    """Write back the page cache and let the disk go quiet, so one run's dirty pages are not
    flushed on the next run's time."""
    os.sync()
    time.sleep(0.3)


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
    run_cpu_s: float  # CPU the client used in the run phase, all threads
    wall_s: float  # the whole process: interpreter, imports, planning, run, gallery
    maxrss: int  # the whole process
    server_cpu_s: float
    images: int
    prepare_s: float = 0.0
    run_maxrss: int = 0  # batchgen: peak RSS when the run phase ended (before the gallery)
    gallery_s: float = 0.0


def batchgen_cmd(manifest: Path, out: Path, url: str, concurrency: int) -> list[str]:
    return [
        PY, str(BENCH / "timed_batchgen.py"), "run", str(manifest), "--out", str(out),
        "--base-url", url, "--no-progress", "--concurrency", str(concurrency), "--yes",
    ]  # fmt: skip


def run_batchgen(
    server: Server,
    manifest: Path,
    jobs: int,
    concurrency: int,
    *,
    fsync: bool = True,
    root: Path | None = None,
) -> Measured:
    out = fresh_dir("batchgen", root)
    env = {"BATCHGEN_API_KEY": KEY, "BENCH_NO_FSYNC": "0" if fsync else "1"}
    server._post("/_fake/reset", {})
    settle()
    cpu0 = server.cpu_s()
    child = run_child(batchgen_cmd(manifest, out, server.url, concurrency), env)
    cpu = server.cpu_s() - cpu0
    images = ledger_lines(out)
    r = child.result
    if child.code != 0 or images != jobs or "run_s" not in r:
        raise RuntimeError(f"batchgen run failed ({child.code}, {images}/{jobs}): {child.stderr}")
    return Measured(
        run_s=r["run_s"],
        run_cpu_s=r["run_cpu_s"],
        wall_s=child.wall_s,
        maxrss=child.maxrss,
        server_cpu_s=cpu,
        images=images,
        prepare_s=r["prepare_s"],
        run_maxrss=int(r["run_maxrss"]),
        gallery_s=float(r.get("gallery_s", 0.0)),
    )


def run_reference(
    kind: str,
    server: Server,
    manifest: Path,
    jobs: int,
    concurrency: int,
    *,
    root: Path | None = None,
) -> Measured:
    out = fresh_dir(kind, root)
    cmd = [
        PY, str(BENCH / "clients.py"), kind, "--manifest", str(manifest), "--url", server.url,
        "--out", str(out), "--concurrency", str(concurrency), "--result", "{result}",
    ]  # fmt: skip
    server._post("/_fake/reset", {})
    settle()
    cpu0 = server.cpu_s()
    child = run_child(cmd)
    cpu = server.cpu_s() - cpu0
    images = int(child.result.get("images", 0))
    if child.code != 0 or images != jobs:
        raise RuntimeError(f"{kind} client failed ({child.code}, {images}/{jobs}): {child.stderr}")
    r = child.result
    return Measured(r["run_s"], r["run_cpu_s"], child.wall_s, child.maxrss, cpu, images)


def median_of(runs: list[Measured], key: Callable[[Measured], float]) -> float:
    return statistics.median(key(r) for r in runs)


# -- scenarios -----------------------------------------------------------------------------


def shm_usable() -> bool:
    return SHM.is_dir() and os.access(SHM, os.W_OK)


def scenario_throughput(server: Server, report: Report, reps: int) -> None:
    jobs, conc = THROUGHPUT_JOBS, THROUGHPUT_CONCURRENCY
    print(f"\n[1] throughput: {jobs} jobs, concurrency {conc}, small images, no latency")
    server.configure()
    manifest = write_manifest("throughput", jobs)
    shm = SHM / "batchgen-bench"
    variants: dict[str, Callable[[], Measured]] = {
        "bare": lambda: run_reference("bare", server, manifest, jobs, conc),
        "durable": lambda: run_reference("durable", server, manifest, jobs, conc),
        "batchgen": lambda: run_batchgen(server, manifest, jobs, conc),
        "sdk": lambda: run_reference("sdk", server, manifest, jobs, conc),
        "batchgen-nofsync": lambda: run_batchgen(server, manifest, jobs, conc, fsync=False),
    }
    if shm_usable():
        variants["bare-tmpfs"] = lambda: run_reference(
            "bare", server, manifest, jobs, conc, root=shm
        )
        variants["durable-tmpfs"] = lambda: run_reference(
            "durable", server, manifest, jobs, conc, root=shm
        )
        variants["batchgen-tmpfs"] = lambda: run_batchgen(server, manifest, jobs, conc, root=shm)
    runs: dict[str, list[Measured]] = {k: [] for k in variants}
    # Interleaved, so drift (other load, page cache, writeback) spreads over every client alike.
    # The run folders are deleted after the last rep, not between reps: on this disk (ext4 with
    # `discard`) deleting a few thousand files makes the next seconds' fsyncs slower, and
    # deleting per rep made every rep slower than the one before.
    for _ in range(reps):
        for name, run in variants.items():
            runs[name].append(run())
    clean()
    t = {k: median_of(v, lambda m: m.run_s) for k, v in runs.items()}
    label = {
        "batchgen": "batchgen CLI (fsync'd sidecar + image, ledger line)",
        "bare": "bare aiohttp + semaphore (plain write, no fsync, no ledger)",
        "durable": "bare loop with the same durability (tmp + fsync + rename, ledger line)",
        "sdk": "google-genai SDK aio + semaphore (plain write)",
        "batchgen-nofsync": "diagnostic: batchgen with its fsync stubbed out",
        "bare-tmpfs": "diagnostic: bare loop writing to tmpfs",
        "durable-tmpfs": "diagnostic: durable bare loop writing to tmpfs",
        "batchgen-tmpfs": "diagnostic: batchgen with its run folder on tmpfs",
    }
    for k, v in runs.items():
        rss = median_of(v, lambda m: m.maxrss)
        cpu = median_of(v, lambda m: m.run_cpu_s)
        report.add(
            "1 throughput",
            label[k],
            f"{jobs / t[k]:.0f} img/s ({t[k]:.2f} s); CPU {cpu / jobs * 1000:.2f} ms/img; "
            f"peak RSS {mb(rss)}",
        )
        server_cpu = median_of(v, lambda m: m.server_cpu_s)
        report.note(
            f"{k}: run phase per rep {[round(m.run_s, 2) for m in v]} s; whole process "
            f"{median_of(v, lambda m: m.wall_s):.2f} s; fake server busy "
            f"{server_cpu / t[k]:.0%} of one core"
        )

    def best(a: str, b: str) -> float:
        return min(m.run_s for m in runs[a]) / min(m.run_s for m in runs[b])

    report.note(
        "on the best rep of each instead of the median: batchgen / bare "
        f"{best('batchgen', 'bare'):.2f}x, batchgen / durable bare "
        f"{best('batchgen', 'durable'):.2f}x"
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
        "batchgen time / durable bare loop time (same fsyncs per image + 1 for the sidecar)",
        f"{t['batchgen'] / t['durable']:.2f}x",
    )
    if "batchgen-tmpfs" in t:
        report.add(
            "1 throughput",
            "diagnostic: the same two ratios with all three writing to tmpfs",
            f"{t['batchgen-tmpfs'] / t['bare-tmpfs']:.2f}x vs bare, "
            f"{t['batchgen-tmpfs'] / t['durable-tmpfs']:.2f}x vs durable bare",
        )
    report.add(
        "1 throughput",
        "batchgen time / SDK time",
        f"{t['batchgen'] / t['sdk']:.2f}x",
        "< 1.00x (ahead of the SDK)",
        t["batchgen"] < t["sdk"],
    )


def scenario_latency(server: Server, report: Report, reps: int) -> None:
    jobs, conc, lat = LATENCY_JOBS, LATENCY_CONCURRENCY, LATENCY_S
    ideal = jobs / conc * lat
    print(f"\n[2] latency-bound: {jobs} jobs, concurrency {conc}, server latency {lat} s")
    server.configure(latency_s=lat)
    manifest = write_manifest("latency", jobs)
    ours: list[Measured] = []
    bare: list[Measured] = []
    for _ in range(reps):
        ours.append(run_batchgen(server, manifest, jobs, conc))
        bare.append(run_reference("bare", server, manifest, jobs, conc))
    server.configure()
    clean()
    t = median_of(ours, lambda m: m.run_s)
    t_bare = median_of(bare, lambda m: m.run_s)
    over = t / ideal - 1
    report.add(
        "2 latency",
        f"batchgen run phase vs ideal {jobs}/{conc} x {lat} s = {ideal:.2f} s",
        f"{t:.2f} s ({over:+.1%})",
        f"<= +{MAX_LATENCY_OVERHEAD:.0%}",
        over <= MAX_LATENCY_OVERHEAD,
    )
    # batchgen sends one request alone until its answer is back (a wrong key costs one request),
    # then the rest at full concurrency: one latency more than the formula above.
    probed = lat * (1 + math.ceil((jobs - 1) / conc))
    report.add(
        "2 latency",
        f"the same vs {probed:.2f} s, the ideal with the one-request probe first",
        f"{t / probed - 1:+.1%}",
    )
    report.add(
        "2 latency",
        "bare loop under the same load, for scale",
        f"{t_bare:.2f} s ({t_bare / ideal - 1:+.1%})",
    )
    report.note(
        f"latency: batchgen per rep {[round(m.run_s, 2) for m in ours]} s, bare "
        f"{[round(m.run_s, 2) for m in bare]} s; batchgen whole process "
        f"{median_of(ours, lambda m: m.wall_s):.2f} s"
    )


def scenario_latency_long(server: Server, report: Report) -> None:
    jobs, conc, lat = LONG_LATENCY_JOBS, LATENCY_CONCURRENCY, LONG_LATENCY_S
    ideal = jobs / conc * lat
    print(f"\n[5] long latency: {jobs} jobs, concurrency {conc}, server latency {lat} s")
    server.configure(latency_s=lat)
    manifest = write_manifest("latency-long", jobs)
    m = run_batchgen(server, manifest, jobs, conc)
    bare = run_reference("bare", server, manifest, jobs, conc)
    server.configure()
    clean()
    over = m.run_s / ideal - 1
    report.add(
        "5 long latency",
        f"batchgen run phase vs ideal {jobs}/{conc} x {lat} s = {ideal:.0f} s",
        f"{m.run_s:.2f} s ({over:+.1%})",
        f"<= +{MAX_LATENCY_OVERHEAD:.0%}",
        over <= MAX_LATENCY_OVERHEAD,
    )
    report.add(
        "5 long latency",
        "bare loop under the same load, for scale (no gate, no ledger)",
        f"{bare.run_s:.2f} s ({bare.run_s / ideal - 1:+.1%})",
    )


def scenario_pacing(server: Server, report: Report) -> None:
    import pacing  # bench/pacing.py

    print("\n[6] pacing against the fake's quota limiter")
    report.note(
        "pacing: limit, limiter window, latency, mode -> share of the limit reached and of "
        "requests refused; `rpm` judged over the whole run (target >= "
        f"{pacing.RPM_MIN_REACHED:.2f}, <= {pacing.RPM_MAX_REFUSED:.0%} refused), `adaptive` "
        f"after the first window (>= {pacing.ADAPTIVE_MIN_REACHED:.2f}, <= "
        f"{pacing.ADAPTIVE_MAX_REFUSED:.0%}); concurrency 32"
    )
    rows = [pacing.TABLE_HEAD]
    for case in pacing.TABLE:
        outcome = pacing.run_case(server, case, WORK / "pacing")
        line = pacing.row(outcome)
        print(line, flush=True)
        rows.append(line)
        report.add(
            "6 pacing",
            case.label,
            f"{outcome.reached:.2f} of the limit, {outcome.refused_share:.1%} refused",
            ">= 0.95, <= 1%" if case.mode == "rpm" else ">= 0.90, <= 10%",
            outcome.ok,
        )
    report.tables.append("\n".join(rows))
    server.configure()
    clean()


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
    clean()
    # The run's own peak: RSS when execute() returned, before the gallery page is built.
    rss = {jobs: m.run_maxrss for jobs, m in peak.items()}
    growth = rss[large] / rss[small] - 1
    bound = base.run_maxrss + conc * PER_JOB_FOOTPRINT * size
    worst = max(rss.values())
    per_job = (worst - base.run_maxrss) / conc / size
    report.add("3 memory", f"baseline: {small} small images", f"peak RSS {mb(base.run_maxrss)}")
    report.add(
        "3 memory",
        f"peak RSS of the run, {small} jobs -> {large} jobs",
        f"{mb(rss[small])} -> {mb(rss[large])} ({growth:+.0%})",
        f"flat: <= +{MAX_MEMORY_GROWTH:.0%}",
        growth <= MAX_MEMORY_GROWTH,
    )
    report.add(
        "3 memory",
        "peak RSS vs baseline + C x (base64 body + image)",
        f"{mb(worst)}: {per_job:.1f} x image size per in-flight job",
        f"<= {mb(bound)} ({PER_JOB_FOOTPRINT:.1f} x per job)",
        worst <= bound,
    )
    report.add(
        "3 memory",
        f"whole process incl. the gallery page, {large} jobs",
        f"peak RSS {mb(peak[large].maxrss)}; gallery {peak[large].gallery_s:.1f} s",
    )
    for jobs, m in peak.items():
        report.note(
            f"memory, {jobs} jobs: run phase {m.run_s:.2f} s "
            f"({jobs * size / MB / m.run_s:.0f} MB/s of images)"
        )


def scenario_planning(server: Server, report: Report) -> None:
    rows = PLAN_ROWS
    print(f"\n[4] planning: {rows:,}-row manifest against a {rows:,}-line ledger")
    folder = WORK / f"plan-{rows}"
    t0 = time.perf_counter()
    subprocess.run(
        [PY, str(BENCH / "planning.py"), "fixture", "--dir", str(folder), "--rows", str(rows)],
        cwd=ROOT,
        check=True,
    )
    report.note(f"planning fixture ready in {time.perf_counter() - t0:.1f} s (cached in {folder})")
    manifest, ledger = folder / "manifest.jsonl", folder / "ledger.jsonl"
    settle()
    child = run_child(
        [PY, str(BENCH / "planning.py"), "plan", "--manifest", str(manifest),
         "--ledger", str(ledger), "--result", "{result}"]
    )  # fmt: skip
    r = child.result
    if child.code != 0 or "total_s" not in r:
        raise RuntimeError(f"planning child failed: {child.stderr}")
    report.add(
        "4 planning",
        "read_index + Manifest.validate counting the plan in one pass",
        f"{r['total_s']:.1f} s (read_index {r['read_index_s']:.1f}, validate + count "
        f"{r['validate_count_s']:.1f})",
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
        f"plan: {r['done']:,} done, {r['pending']:,} pending, "
        f"{r['failed_skipped']:,} failed and skipped"
    )
    # The real command on a copy of that folder: plan, send one request, refresh the gallery.
    out = fresh_dir("plan-run")
    out.mkdir(parents=True)
    shutil.copyfile(ledger, out / "ledger.jsonl")
    server.configure()
    settle()
    cmd = [*batchgen_cmd(manifest, out, server.url, 8), "--limit", "1"]
    run = run_child(cmd, {"BATCHGEN_API_KEY": KEY})
    clean()
    rr = run.result
    if run.code != 0 or "prepare_s" not in rr:
        raise RuntimeError(f"batchgen run --limit 1 failed ({run.code}): {run.stderr}")
    before_gallery = rr["prepare_s"] + rr.get("run_s", 0.0)
    report.add(
        "4 planning",
        "`batchgen run --limit 1` there: planning + one image",
        f"{before_gallery:.1f} s (planning {rr['prepare_s']:.1f} s); "
        f"peak RSS {mb(rr['run_maxrss'])}",
        f"< {MAX_PLAN_S:.0f} s, < {mb(MAX_PLAN_RSS)}",
        before_gallery < MAX_PLAN_S and rr["run_maxrss"] < MAX_PLAN_RSS,
    )
    report.add(
        "4 planning",
        "... then its end-of-run gallery refresh",
        f"{rr.get('gallery_s', 0.0):.1f} s; whole process {run.wall_s:.1f} s, "
        f"peak RSS {mb(run.maxrss)}",
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


def write_results(
    report: Report, started: dt.datetime, elapsed: float, partial: bool, load: str
) -> None:
    path = BENCH / "RESULTS.md"
    kept = ""
    if path.exists():
        text = path.read_text()
        if NOTES_MARK in text:
            kept = text[text.index(NOTES_MARK) :]
    args = " ".join(sys.argv[1:])
    command = f".venv/bin/python bench/run.py {args}".strip()
    body = [
        "# Benchmark results",
        "",
        "Written by `bench/run.py`; see bench/README.md for what each scenario measures.",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- load average when the bench started: {load} (the machine is shared)",
        f"- command: `{command}` ({elapsed:.0f} s{', some scenarios only' if partial else ''})",
        "",
        report.table(),
        "",
        *[t + "\n" for t in report.tables],
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
    ap.add_argument("--reps", type=int, default=5, help="throughput repetitions (median)")
    ap.add_argument("--no-write", action="store_true", help="do not rewrite bench/RESULTS.md")
    args = ap.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    WORK.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {machine()}; load average {load}")
    report = Report()
    server = Server()
    try:
        print(f"fake server: {server.url} (pid {server.proc.pid})")
        if "throughput" in chosen:
            scenario_throughput(server, report, args.reps)
        if "latency" in chosen:
            scenario_latency(server, report, max(1, min(args.reps, 2)))
        if "memory" in chosen:
            scenario_memory(server, report)
        if "planning" in chosen:
            scenario_planning(server, report)
        if "latency_long" in chosen:
            scenario_latency_long(server, report)
        if "pacing" in chosen:
            scenario_pacing(server, report)
    finally:
        server.stop()
        clean()
    elapsed = time.perf_counter() - t0
    print(f"\n{report.table()}\n\n({elapsed:.0f} s)")
    if not args.no_write:
        write_results(report, started, elapsed, len(chosen) < len(SCENARIOS), load)
        print(f"written: {BENCH / 'RESULTS.md'}")
    return 0 if all(r.ok is not False for r in report.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
