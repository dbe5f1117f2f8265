"""A million rows (issue 25): ``status``, ``validate`` and ``run --limit 1`` beside their floors.

    .venv/bin/python bench/scale.py                 # 3 interleaved rounds, writes RESULTS.md
    .venv/bin/python bench/scale.py --rounds 1 --no-write

- ``status`` on the 1,000,000-line ledger of bench/planning.py's fixture (90% succeeded, no
  image files: every succeeded job reads as missing), against ``planning.py floor-status``
  (orjson per line, the last status per job, the spend);
- ``validate`` and ``run --limit 1`` (a fresh folder, against the fake server in its own
  process, the end-of-run gallery included) on a 1,000,000-row dataset CSV (id, prompt, ratio,
  size, two metadata columns), against ``planning.py floor-csv`` (csv rows + a sha256 each).

Every command runs in its own process; wall and CPU seconds and peak RSS come from
``os.wait4``. Rounds are interleaved (the machine is shared): the verdicts use ratios of medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from results_md import write_section

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = BENCH / "work"
PY = sys.executable
KEY = "bench-scale-key"
BEGIN, END = "<!-- bench/scale.py: begin -->", "<!-- bench/scale.py: end -->"
ROWS = 1_000_000


@dataclass
class Timed:
    wall: float
    cpu: float
    rss_mb: float


def timed(cmd: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,),
          cwd: Path = ROOT) -> Timed:
    """``python -m batchgen`` runs the batchgen found in ``cwd`` (--baseline: another tree)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) not in ok:
        raise SystemExit(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return Timed(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


class FakeServer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "batchgen", "fake-server", "--port", "0", "--key", KEY],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "listening on " not in line:
            self.stop()
            raise SystemExit(f"the fake server did not start: {line!r}")
        self.url = line.rsplit("listening on ", 1)[1].strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@dataclass
class Pair:
    name: str
    floor_name: str
    target: float
    ours: list[Timed]
    floor: list[Timed]
    base: list[Timed] = field(default_factory=list)

    def ratio(self, key: str) -> float:
        return (statistics.median(getattr(t, key) for t in self.ours)
                / statistics.median(getattr(t, key) for t in self.floor))

    def row(self) -> str:
        ours_w = statistics.median(t.wall for t in self.ours)
        floor_w = statistics.median(t.wall for t in self.floor)
        per = ", ".join(f"{a.wall / b.wall:.2f}" for a, b in zip(self.ours, self.floor,
                                                                  strict=True))
        ratio = self.ratio("wall")
        rss = max(t.rss_mb for t in self.ours)
        verdict = "PASS" if ratio < self.target and rss < 1000 else "MISS"
        before = ""
        if self.base:
            b = statistics.median(t.wall for t in self.base) / floor_w
            bc = (statistics.median(t.cpu for t in self.base)
                  / statistics.median(t.cpu for t in self.floor))
            before = f"; before: {b:.2f}x wall, {bc:.2f}x CPU"
        return (f"| {self.name} | median {ours_w:.1f} s (min {min(t.wall for t in self.ours):.1f})"
                f", CPU {statistics.median(t.cpu for t in self.ours):.1f} s, peak RSS "
                f"{rss:.0f} MB | {self.floor_name}: {floor_w:.1f} s, CPU "
                f"{statistics.median(t.cpu for t in self.floor):.1f} s | {ratio:.2f}x wall "
                f"(rounds {per}); {self.ratio('cpu'):.2f}x CPU{before} | "
                f"< {self.target:g}x, < 1 GB | {verdict} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="status,validate,run")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--baseline", type=Path,
                    help="a tree holding another batchgen/ (e.g. main's): timed in the same rounds")
    args = ap.parse_args()
    only = args.only.split(",")
    plan_dir = WORK / f"plan-{ROWS}"
    subprocess.run([PY, str(BENCH / "planning.py"), "fixture", "--dir", str(plan_dir),
                    "--rows", str(ROWS)], check=True, cwd=ROOT)
    csv_path = WORK / f"csv-{ROWS}" / "manifest.csv"
    subprocess.run([PY, str(BENCH / "planning.py"), "csv", "--path", str(csv_path),
                    "--rows", str(ROWS)], check=True, cwd=ROOT)
    status_dir = WORK / "scale-status"
    status_dir.mkdir(parents=True, exist_ok=True)
    ledger = status_dir / "ledger.jsonl"
    if not ledger.exists():
        os.link(plan_dir / "ledger.jsonl", ledger)  # a folder of the ledger alone
    load = os.getloadavg()
    started = time.monotonic()
    pairs = {
        "status": Pair(f"`status`, {ROWS:,}-line ledger", "orjson per line", 2.0, [], []),
        "validate": Pair(f"`validate`, {ROWS:,}-row CSV", "csv + sha256 per row", 3.0, [], []),
        "run": Pair("`run --limit 1`, the same CSV, a new folder", "csv + sha256 per row", 3.0,
                    [], []),
    }
    server = FakeServer() if "run" in only else None
    floor_csv = [PY, str(BENCH / "planning.py"), "floor-csv", str(csv_path)]
    try:
        for r in range(args.rounds):
            if "status" in only:
                p = pairs["status"]
                p.ours.append(timed([PY, "-m", "batchgen", "status", str(status_dir)]))
                if args.baseline:
                    p.base.append(timed([PY, "-m", "batchgen", "status", str(status_dir)],
                                        cwd=args.baseline))
                p.floor.append(timed([PY, str(BENCH / "planning.py"), "floor-status",
                                      str(ledger)]))
            if "validate" in only:
                p = pairs["validate"]
                p.ours.append(timed([PY, "-m", "batchgen", "validate", str(csv_path)]))
                if args.baseline:
                    p.base.append(timed([PY, "-m", "batchgen", "validate", str(csv_path)],
                                        cwd=args.baseline))
                p.floor.append(timed(floor_csv))
            if server is not None:
                p = pairs["run"]
                out = WORK / "scale-run"
                shutil.rmtree(out, ignore_errors=True)
                run_cmd = [PY, "-m", "batchgen", "run", str(csv_path), "--out", str(out),
                           "--base-url", server.url, "--limit", "1", "--yes", "--no-progress"]
                p.ours.append(timed(run_cmd, {"BATCHGEN_API_KEY": KEY}))
                if args.baseline:
                    shutil.rmtree(out, ignore_errors=True)
                    p.base.append(timed(run_cmd, {"BATCHGEN_API_KEY": KEY}, cwd=args.baseline))
                p.floor.append(timed(floor_csv))
            done = [f"{k} {p.ours[-1].wall:.1f}/{p.floor[-1].wall:.1f} s "
                    f"({p.ours[-1].wall / p.floor[-1].wall:.2f}x, {p.ours[-1].rss_mb:.0f} MB)"
                    for k, p in pairs.items() if p.ours]
            print(f"round {r + 1}: {'; '.join(done)}; load {os.getloadavg()[0]:.1f}",
                  flush=True)
    finally:
        if server is not None:
            server.stop()
    rows = [p.row() for k, p in pairs.items() if p.ours]
    section = "\n".join([
        BEGIN,
        "## At a million rows (`bench/scale.py`, issue 25)",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at the "
        f"start {' '.join(f'{x:.2f}' for x in load)}, at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 shared cores)",
        f"- command: `.venv/bin/python bench/scale.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" ({time.monotonic() - started:.0f} s); every command in its own process, wall, "
        "CPU and peak RSS from `os.wait4`; rounds interleaved, verdict on the ratio of wall "
        "medians (CPU shown too: under this load it is the steadier of the two)"
        + ("; \"before\": `--baseline` (the code before issue 25) timed in the same rounds, "
           "as a ratio to the same floor" if args.baseline else ""),
        "",
        "| work | batchgen | floor | ratio | target | verdict |",
        "|---|---|---|---|---|---|",
        *rows,
        END,
    ])
    print(section)
    if not args.no_write:
        write_section(section, BEGIN, END)


if __name__ == "__main__":
    main()
