"""Speed at realistic image sizes (issue 25): batchgen beside a floor written by hand, same run.

    .venv/bin/python bench/realistic.py                       # every row, writes RESULTS.md
    .venv/bin/python bench/realistic.py --only collect_1mb --rounds 3 --no-write

The fake server runs in its own process with ``--image-bytes``: answer images at real pixel
sizes (1K: 1024 x 1024) and the byte size asked for, different bytes in every answer
(batchgen/fake/sized.py). Rows:

- ``collect_1mb`` / ``collect_6mb``: ``run --mode batch --wait`` collecting finished batches of
  1 MB (1K) or 6 MB (2K) images, timed around ``Collector.collect`` (download, parse, decode,
  store, ledger; bench/timed_batchgen.py), against ``bench/floor_collect.py`` on a batch of the
  same size (stream, parse, decode, tmp + fsync + rename, ledger line). The end-of-run gallery
  (batchgen's default) is timed in the same child and set against the collection.
- ``live_1mb``: ``run`` (live) with 1 MB answers against bench/clients.py's ``durable`` loop
  (aiohttp + semaphore, tmp + fsync + rename, ledger line) and the google-genai SDK.
- ``live_small``: small answers against clients.py's ``promises`` loop, which keeps batchgen's
  promises by hand: an intent line before each send (one fsync for the requests ready
  together), image and sidecar durable, a ledger line, grouped fsyncs.

Every round runs batchgen and its floor one after the other, the order alternating; the machine
is shared, so each row is judged on the ratio of the medians, with every round's ratio printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from results_md import RESULTS, write_section

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
KEY = "fake-key"
MODEL = "gemini-3-pro-image"
BEGIN = "<!-- realistic:begin -->"
END = "<!-- realistic:end -->"


@dataclass
class Child:
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    code: int
    result: dict[str, Any]
    stderr: str


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> Child:
    fd, result = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    full = {**os.environ, "BATCHGEN_API_KEY": KEY, "BENCH_RESULT": result, **(env or {})}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=full, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode(errors="replace")
    try:
        data = json.loads(Path(result).read_text() or "{}")
    except ValueError:
        data = {}
    os.unlink(result)
    return Child(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                 os.waitstatus_to_exitcode(status), data, text)


class Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "batchgen", "fake-server", "--port", "0", "--key", KEY],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip().rsplit(" ", 1)[-1]

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[Any, Any]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"x-goog-api-key": KEY, **(headers or {})})
        with urllib.request.urlopen(req, timeout=600) as resp:
            raw = resp.read()
            return (json.loads(raw) if raw else {}), resp.headers

    def configure(self, **cfg: Any) -> None:
        self.call("POST", "/_fake/config", json.dumps(cfg).encode(),
                  {"Content-Type": "application/json"})

    def all_batches_done(self, timeout: float = 900) -> None:
        """Wait until the fake has written every batch's results: none is being made while a
        collection is timed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ops = self.call("GET", "/v1beta/batches?pageSize=1000")[0].get("operations", [])
            if all(op.get("done") for op in ops):
                return
            time.sleep(0.2)
        raise RuntimeError("the fake's batches did not finish")

    def floor_batch(self, jobs: int, size: str, tag: str) -> str:
        """A batch made by hand for the floor; the name of its operation."""
        lines = b"".join(orjson.dumps({"key": f"{tag}-{i:06d}", "request": {
            "contents": [{"role": "user", "parts": [{"text": f"floor {tag} image {i}"}]}],
            "generationConfig": {"responseModalities": ["IMAGE"],
                                 "imageConfig": {"aspectRatio": "1:1", "imageSize": size}},
        }}) + b"\n" for i in range(jobs))
        _, h = self.call("POST", "/upload/v1beta/files", json.dumps(
            {"file": {"display_name": tag}}).encode(), {
            "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(lines)),
            "Content-Type": "application/json"})
        up = urllib.request.Request(h["X-Goog-Upload-URL"], data=lines, method="POST", headers={
            "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"})
        with urllib.request.urlopen(up) as resp:
            file = json.loads(resp.read())["file"]["name"]
        op, _ = self.call("POST", f"/v1beta/models/{MODEL}:batchGenerateContent", json.dumps(
            {"batch": {"display_name": tag, "input_config": {"file_name": file}}}).encode(),
            {"Content-Type": "application/json"})
        return str(op["name"])

    def responses_file(self, op_name: str) -> str:
        op, _ = self.call("GET", f"/v1beta/{op_name}")
        return str(op["response"]["responsesFile"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def write_manifest(path: Path, jobs: int, size: str, tag: str) -> Path:
    with path.open("w") as fh:
        for i in range(jobs):
            fh.write(json.dumps({"prompt": f"{tag} image {i}: a red cube", "image_size": size})
                     + "\n")
    return path


@dataclass
class Round:
    ours_s: float
    floor_s: float
    ours_cpu: float  # CPU seconds of the timed phase (every thread of the process)
    floor_cpu: float
    ours_rss: float
    floor_rss: float
    extra_s: float = 0.0  # the gallery after the collection, or the SDK's time
    extra_cpu: float = 0.0
    simd_floor_s: float = 0.0  # the collection floor with pybase64 (informational)


@dataclass
class RowResult:
    name: str
    work: str
    jobs: int
    floor: str
    target: float  # the most batchgen / floor may be
    rounds: list[Round]
    extra_name: str = ""
    extra_target: float | None = None  # gallery / collection, at most
    loads: tuple[float, ...] = ()

    def ratios(self) -> list[float]:
        return [r.ours_s / r.floor_s for r in self.rounds]

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.rounds)

    @property
    def ratio(self) -> float:
        return self.med("ours_s") / self.med("floor_s")

    @property
    def extra_ratio(self) -> float:
        return self.med("extra_s") / self.med("ours_s")

    @property
    def ok(self) -> bool:
        good = self.ratio <= self.target
        if self.extra_target is not None:
            if self.extra_name == "SDK":  # batchgen must be ahead of the SDK
                good = good and self.med("ours_s") < self.med("extra_s")
            else:
                good = good and self.extra_ratio <= self.extra_target
        return good


PROFILE: Path | None = None  # --profile: batchgen's children run under py-spy, stacks saved


def profiled(cmd: list[str], name: str) -> list[str]:
    if PROFILE is None:
        return cmd
    PROFILE.mkdir(parents=True, exist_ok=True)
    spy = Path(PY).with_name("py-spy")
    return [str(spy), "record", "-f", "raw", "-r", "200", "--threads", "-o",
            str(PROFILE / f"{name}.txt"), "--", *cmd]


def batchgen_collect(base: list[str]) -> Child:
    c = run_child(profiled([*base, "--wait"], Path(base[3]).stem))
    if c.code != 0 or "collect_s" not in c.result:
        raise RuntimeError(f"collect failed ({c.code}): {c.stderr[-1500:]}")
    return c


def floor_collect(server: Server, file: str, out: Path, simd: bool = False) -> Child:
    res = out.with_suffix(".json")
    c = run_child([PY, str(BENCH / "floor_collect.py"), "--url", server.url, "--file", file,
                   "--out", str(out), "--result", str(res), *(["--simd"] if simd else [])])
    if c.code != 0:
        raise RuntimeError(f"floor failed ({c.code}): {c.stderr[-1500:]}")
    c.result = json.loads(res.read_text())
    return c


def batchgen_live(server: Server, manifest: Path, out: Path, concurrency: int) -> Child:
    c = run_child(profiled([PY, str(BENCH / "timed_batchgen.py"), "run", str(manifest),
                            "--out", str(out), "--provider", "google", "--base-url", server.url,
                            "--no-progress", "--concurrency", str(concurrency), "--yes"],
                           manifest.stem))
    if c.code != 0 or "run_s" not in c.result:
        raise RuntimeError(f"live run failed ({c.code}): {c.stderr[-1500:]}")
    return c


def client(kind: str, server: Server, manifest: Path, out: Path, concurrency: int) -> Child:
    res = out.with_suffix(".json")
    c = run_child([PY, str(BENCH / "clients.py"), kind, "--manifest", str(manifest), "--url",
                   server.url, "--out", str(out), "--concurrency", str(concurrency),
                   "--result", str(res)])
    if c.code != 0:
        raise RuntimeError(f"{kind} failed ({c.code}): {c.stderr[-1500:]}")
    c.result = json.loads(res.read_text())
    return c


def collect_row(server: Server, work: Path, name: str, jobs: int, size: str, image_bytes: int,
                rounds: int) -> RowResult:
    server.configure(image_bytes=image_bytes, batch_seconds=0.5, latency_s=0.0, faults={})
    out: list[Round] = []
    loads = []
    for r in range(rounds):
        tag = f"{name}-{r}"
        manifest = write_manifest(work / f"{tag}.jsonl", jobs, size, tag)
        base = [PY, str(BENCH / "timed_batchgen.py"), "run", str(manifest), "--out",
                str(work / f"{tag}-batchgen"), "--provider", "google", "--base-url", server.url,
                "--mode", "batch", "--no-progress", "--batch-size", str(jobs),
                "--poll-interval", "0.2", "--yes"]
        submit = run_child(base)
        if submit.code not in (0, 5):
            raise RuntimeError(f"submit failed ({submit.code}): {submit.stderr[-1500:]}")
        op = server.floor_batch(jobs, size, tag)
        server.all_batches_done()
        file = server.responses_file(op)
        if r % 2 == 0:
            ob = batchgen_collect(base)
            fl = floor_collect(server, file, work / f"{tag}-floor")
            simd = floor_collect(server, file, work / f"{tag}-floor-simd", simd=True)
        else:
            simd = floor_collect(server, file, work / f"{tag}-floor-simd", simd=True)
            fl = floor_collect(server, file, work / f"{tag}-floor")
            ob = batchgen_collect(base)
        out.append(Round(ob.result["collect_s"], fl.result["collect_s"],
                         ob.result["collect_cpu_s"], fl.result["collect_cpu_s"], ob.maxrss_mb,
                         fl.maxrss_mb,
                         ob.result.get("gallery_s", 0.0) + ob.result.get("store_close_s", 0.0),
                         ob.result.get("gallery_cpu_s", 0.0), simd.result["collect_s"]))
        loads.append(os.getloadavg()[0])
        print_round(name, r, out[-1], "gallery")
    return RowResult(name, f"batch collect, {jobs:,} x {image_bytes / 1e6:g} MB ({size})", jobs,
                     "stream + parse + b64 + tmp/fsync/rename + ledger line (floor_collect.py)",
                     1.10, out, "gallery", 0.05, tuple(loads))


def live_row(server: Server, work: Path, name: str, jobs: int, image_bytes: int | None,
             concurrency: int, floor_kind: str, target: float, rounds: int,
             sdk: bool) -> RowResult:
    server.configure(image_bytes=image_bytes, latency_s=0.0, faults={})
    out: list[Round] = []
    loads = []
    for r in range(rounds):
        tag = f"{name}-{r}"
        manifest = write_manifest(work / f"{tag}.jsonl", jobs, "1K", tag)
        if r % 2 == 0:
            ob = batchgen_live(server, manifest, work / f"{tag}-batchgen", concurrency)
            fl = client(floor_kind, server, manifest, work / f"{tag}-{floor_kind}", concurrency)
        else:
            fl = client(floor_kind, server, manifest, work / f"{tag}-{floor_kind}", concurrency)
            ob = batchgen_live(server, manifest, work / f"{tag}-batchgen", concurrency)
        sd = client("sdk", server, manifest, work / f"{tag}-sdk", concurrency) if sdk else None
        out.append(Round(ob.result["run_s"], fl.result["run_s"], ob.result["run_cpu_s"],
                         fl.result["run_cpu_s"], ob.maxrss_mb, fl.maxrss_mb,
                         sd.result["run_s"] if sd else 0.0, sd.result["run_cpu_s"] if sd else 0.0))
        loads.append(os.getloadavg()[0])
        print_round(name, r, out[-1], "sdk" if sdk else "")
    size = (f"{image_bytes / 1e6:g} MB" if image_bytes and image_bytes >= 1_000_000
            else f"small ({image_bytes / 1e3:g} KB)" if image_bytes else "small (64 x 64)")
    return RowResult(name, f"live, {jobs:,} x {size}, concurrency {concurrency}", jobs,
                     f"clients.py {floor_kind}", target, out, "SDK" if sdk else "",
                     0.0 if sdk else None, tuple(loads))


def print_round(name: str, r: int, x: Round, extra: str) -> None:
    tail = f", {extra} {x.extra_s:.2f}s" if extra else ""
    if x.simd_floor_s:
        tail += f", floor with pybase64 {x.simd_floor_s:.2f}s"
    print(f"{name} round {r}: batchgen {x.ours_s:.2f}s floor {x.floor_s:.2f}s ratio "
          f"{x.ours_s / x.floor_s:.2f}{tail}; load {os.getloadavg()[0]:.1f}", flush=True)


def kept_rows(text: str, fresh: list[str]) -> dict[str, tuple[str, str]]:
    """The rows of the section now in RESULTS.md that this run did not measure (``--only``):
    name -> (its table line, its per-round line), so a run of one row keeps the others."""
    if BEGIN not in text or END not in text:
        return {}
    lines = text[text.index(BEGIN): text.index(END)].splitlines()
    table = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| work")]
    rounds = [ln for ln in lines if ln.startswith("- ") and ": per-round ratios" in ln]
    names = [ln[2:].split(":", 1)[0] for ln in rounds]
    if len(table) != len(rounds):
        return {}
    return {n: (t, r) for n, t, r in zip(names, table, rounds, strict=True) if n not in fresh}


def section(rows: list[RowResult], kept: dict[str, tuple[str, str]] | None = None) -> str:
    kept = kept or {}
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "## At realistic sizes (`bench/realistic.py`, issue 25)", "",
             f"- date: {date}; {os.cpu_count()} cores, shared (load average per round below)",
             "- the fake answers real pixel sizes with distinct bytes per image "
             "(`fake-server --image-bytes`); ratios are of medians over interleaved rounds", "",
             "| work | batchgen (median) | floor (median) | ratio (target) | CPU an image "
             "(batchgen / floor) | peak RSS (batchgen / floor) | also | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    table: dict[str, str] = {name: line for name, (line, _) in kept.items()}
    for x in rows:
        n = x.jobs
        also = ""
        if x.extra_name == "gallery":
            also = (f"gallery work at the end (thumbnails' last wait + page) "
                    f"{x.med('extra_s'):.2f} s = "
                    f"{x.extra_ratio:.1%} of the collection (target <= 5%); against the floor "
                    f"with pybase64 ({x.med('simd_floor_s'):.2f} s): "
                    f"{x.med('ours_s') / x.med('simd_floor_s'):.2f}x")
        elif x.extra_name == "SDK":
            also = (f"SDK {x.med('extra_s'):.2f} s: batchgen "
                    f"{x.med('extra_s') / x.med('ours_s'):.2f}x faster")
        mbps = ""
        table[x.name] = (
            f"| {x.work}{mbps} | {x.med('ours_s'):.2f} s | {x.med('floor_s'):.2f} s "
            f"({x.floor}) | **{x.ratio:.2f}x** (<= {x.target:.2f}x) | "
            f"{x.med('ours_cpu') / n * 1000:.1f} / {x.med('floor_cpu') / n * 1000:.1f} ms | "
            f"{x.med('ours_rss'):.0f} / {x.med('floor_rss'):.0f} MB | {also} | "
            f"{'PASS' if x.ok else 'MISS'} |")
    per_round: dict[str, str] = {name: line for name, (_, line) in kept.items()}
    for x in rows:
        per = ", ".join(f"{v:.2f}" for v in x.ratios())
        per_round[x.name] = (f"- {x.name}: per-round ratios {per} (min {min(x.ratios()):.2f}, "
                             f"median {statistics.median(x.ratios()):.2f}); load "
                             + ", ".join(f"{v:.1f}" for v in x.loads) + f" ({date})")
    order = [name for name in ROWS if name in table]
    lines += [table[name] for name in order] + [""] + [per_round[name] for name in order]
    lines += ["", END]
    return "\n".join(lines)


ROWS = ("collect_1mb", "collect_6mb", "live_1mb", "live_small")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(ROWS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs-1mb", type=int, default=600)
    ap.add_argument("--jobs-6mb", type=int, default=80)
    ap.add_argument("--live-jobs", type=int, default=400)
    ap.add_argument("--small-jobs", type=int, default=600)
    ap.add_argument("--small-bytes", type=int, default=60_000,
                    help="the small row's image size (issue 25: ~60 KB answers, 1K pixels); 0: the "
                         "fake's default 64 x 64 pictures")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--no-sdk", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--work", type=Path, default=None, help="a folder for the run folders")
    ap.add_argument("--profile", type=Path, default=None,
                    help="run batchgen under py-spy, raw stacks into this folder (slower)")
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.profile
    wanted = args.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="batchgen-realistic-", dir=args.work))
    server = Server()
    rows: list[RowResult] = []
    try:
        if "collect_1mb" in wanted:
            rows.append(collect_row(server, work, "collect_1mb", args.jobs_1mb, "1K", 1_000_000,
                                    args.rounds))
        if "collect_6mb" in wanted:
            rows.append(collect_row(server, work, "collect_6mb", args.jobs_6mb, "2K", 6_000_000,
                                    args.rounds))
        if "live_1mb" in wanted:
            rows.append(live_row(server, work, "live_1mb", args.live_jobs, 1_000_000,
                                 args.concurrency, "durable", 1.10, args.rounds,
                                 not args.no_sdk))
        if "live_small" in wanted:
            rows.append(live_row(server, work, "live_small", args.small_jobs,
                                 args.small_bytes or None, args.concurrency, "promises", 1.25,
                                 args.rounds, False))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    old = RESULTS.read_text() if RESULTS.exists() and not args.no_write else ""
    text = section(rows, kept_rows(old, [x.name for x in rows]))
    print(text)
    if not args.no_write:
        write_section(text, BEGIN, END)
    print(f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}"
          " MB", file=sys.stderr)
    return 0 if all(x.ok for x in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
