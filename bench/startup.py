"""Start-up time of the commands a user runs to look, not to generate (issue 8: under 0.15 s).

    .venv/bin/python bench/startup.py            # 40 rounds, a minute or so
    .venv/bin/python bench/startup.py --rounds 10 --other /path/to/another/venv/bin

Each round runs every command once, one after another, so a slow minute on a shared machine
slows every command alike. Each is timed by wall clock and by its own CPU time (the children's
rusage), with bytecode caching on (PYTHONDONTWRITEBYTECODE unset), as on a user's machine.
`python -c pass` and `python -c "import click"` are the floor: what any click CLI pays.
With ``--other``, the same commands from a second environment (an older checkout, a wheel
install) run in the same rounds, for a comparison taken at the same moments.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.15


def commands(bin_dir: Path, folder: Path) -> dict[str, list[str]]:
    py, cli = str(bin_dir / "python"), str(bin_dir / "batchgen")
    return {
        "python -c pass": [py, "-c", "pass"],
        'python -c "import click"': [py, "-c", "import click"],
        "batchgen --version": [cli, "--version"],
        "batchgen --help": [cli, "--help"],
        "batchgen status FOLDER": [cli, "status", str(folder)],
    }


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_folder(root: Path) -> Path:
    """A small finished run folder: a ledger of 200 lines and a run.json, as `status` reads."""
    folder = root / "run"
    folder.mkdir()
    lines = [
        json.dumps({"job_id": f"j{i}", "status": "succeeded", "attempts": 1, "cost_usd": 0.134,
                    "image_path": f"images/00/j{i}.png"})
        for i in range(200)
    ]
    (folder / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "run.json").write_text('{"manifest": "m.yaml", "jobs": 200}')
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--bin", type=Path, default=Path(sys.executable).parent,
                    help="the venv's bin folder (default: this Python's)")
    ap.add_argument("--other", type=Path, help="a second venv's bin folder, timed alongside")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = run_folder(Path(tmp))
        sets = {"": commands(args.bin, folder)}
        if args.other:
            sets["other: "] = commands(args.other, folder)
        cmds = {prefix + name: argv for prefix, cs in sets.items() for name, argv in cs.items()}
        for argv in cmds.values():  # warm the bytecode caches and the page cache
            subprocess.run(argv, env=env, capture_output=True, check=True)
        wall: dict[str, list[float]] = {k: [] for k in cmds}
        cpu: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(args.rounds):
            for name, argv in cmds.items():
                t0, c0 = time.perf_counter(), _children_cpu()
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(_children_cpu() - c0)
    print(f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f}\n")
    print("| command | wall median | wall best | CPU median |")
    print("|---|---|---|---|")
    for name in cmds:
        print(f"| `{name}` | {statistics.median(wall[name]):.3f} s | {min(wall[name]):.3f} s "
              f"| {statistics.median(cpu[name]):.3f} s |")
    mine = [n for n in sets[""] if n.startswith("batchgen")]
    worst = max(statistics.median(wall[n]) for n in mine)
    print(f"\nslowest batchgen command: median {worst:.3f} s (aim: under {TARGET_S} s)")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
