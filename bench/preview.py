"""``run --preview N`` at scale: the choice alone, and the whole run next to ``estimate``.

    python bench/preview.py --rows 1000 --values 10 --preview 50

The manifest has ``rows`` matrix rows of two vars of ``values`` values each (rows x values^2
jobs). ``pick`` times :func:`batchgen.planning.preview.pick` over the jobs in memory; ``run``
times ``batchgen run --fake --preview N`` end to end (it reads the manifest twice more than a plain
run: to choose and price, then to count the chosen) against ``run --limit N`` and ``batchgen
estimate``, which read it once.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson


def write_manifest(path: Path, rows: int, values: int) -> None:
    vals = [f"v{i}" for i in range(values)]
    with path.open("wb") as fh:
        for r in range(rows):
            fh.write(orjson.dumps({"prompt": f"row {r}: a {{a}} fox, {{b}}",
                                   "vars": {"a": vals, "b": vals}}) + b"\n")


def timed(*args: str | Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "batchgen", *map(str, args)], check=True,
                   capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--values", type=int, default=10)
    ap.add_argument("--preview", type=int, default=50)
    a = ap.parse_args()
    from batchgen.manifest import Manifest
    from batchgen.planning.preview import pick

    with tempfile.TemporaryDirectory() as tmp:
        m = Path(tmp) / "m.jsonl"
        write_manifest(m, a.rows, a.values)
        jobs = list(Manifest(m).iter_jobs())
        t = time.perf_counter()
        pick(((job, True) for job in jobs), a.preview)
        pick_s = time.perf_counter() - t
        est_s = timed("estimate", m, "--out", Path(tmp) / "run")
        common = ("--no-progress", "--no-gallery", "--yes", "--fake")
        limit_s = timed("run", m, "--out", Path(tmp) / "limit", "--limit", str(a.preview), *common)
        run_s = timed("run", m, "--out", Path(tmp) / "run", "--preview", str(a.preview), *common)
    print(f"{len(jobs)} jobs, --preview {a.preview}: pick {pick_s:.2f} s; "
          f"estimate {est_s:.1f} s; run --limit {a.preview} {limit_s:.1f} s; "
          f"run --preview {a.preview} {run_s:.1f} s")


if __name__ == "__main__":
    main()
