"""The floor for batch collection: a results file into durable images by hand, nothing more.

    python bench/floor_collect.py --url URL --file files/ID --out DIR --result R.json

What a careful hand-written collector does, with the standard library and orjson: stream the
results file over HTTP a line at a time, parse each line, base64-decode its final image, write it
to ``<key>.png.tmp``, fsync, rename, and append a flushed ledger line once the image is durable.
The writes go to 8 threads with at most 64 images in flight (fsync is a wait on the disk; one
fsync at a time would make the floor slower than batchgen, not a floor), the ledger and the
directory are fsync'd at the end. No sidecar, no sha256, no image probe, no retries: it is what
batchgen's collection is measured against (bench/realistic.py).

``--simd`` decodes the base64 with pybase64 instead of the standard library: the floor made as
fast as batchgen's own decoder, so the comparison does not flatter batchgen.

The result file gets the time from the request for the file until the last ledger line is
durable, and the CPU seconds (every thread) spent meanwhile.
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import resource
import time
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import orjson

KEY = "fake-key"
IN_FLIGHT = 64


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def write_durably(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def final_b64(obj: dict[str, object]) -> str:
    parts = obj["response"]["candidates"][0]["content"]["parts"]  # type: ignore[index]
    for part in reversed(parts):
        inline = part.get("inlineData")
        if inline and not part.get("thought"):
            return str(inline["data"])
    raise ValueError("no image")


def collect(url: str, file: str, out: Path, simd: bool = False) -> int:
    if simd:
        import pybase64

        def decode(text: str) -> bytes:
            return pybase64.b64decode(text, validate=True)
    else:
        decode = binascii.a2b_base64
    out.mkdir(parents=True, exist_ok=True)
    images = str(out)
    src = f"{url}/download/v1beta/{file}:download?alt=media"
    req = urllib.request.Request(src, headers={"x-goog-api-key": KEY})
    pending: dict[Future[None], bytes] = {}
    done = 0
    with open(out / "ledger.jsonl", "ab") as ledger, \
            ThreadPoolExecutor(8) as pool, urllib.request.urlopen(req) as resp:

        def settle(block: bool) -> None:
            nonlocal done
            finished, _ = wait(pending, return_when=FIRST_COMPLETED) if block else (
                [f for f in pending if f.done()], None)
            for fut in finished:
                fut.result()
                ledger.write(pending.pop(fut))
                done += 1
            ledger.flush()

        for raw in resp:
            if not raw.strip():
                continue
            obj = orjson.loads(raw)
            del raw
            key = str(obj["key"])
            data = decode(final_b64(obj))
            del obj
            path = os.path.join(images, f"{key}.png")
            line = orjson.dumps({"job": key, "status": "succeeded", "output": path,
                                 "bytes": len(data)}) + b"\n"
            while len(pending) >= IN_FLIGHT:
                settle(block=True)
            pending[pool.submit(write_durably, path, data)] = line
            del data
            settle(block=False)
        while pending:
            settle(block=True)
        os.fsync(ledger.fileno())
    fd = os.open(images, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--simd", action="store_true", help="pybase64, not the stdlib")
    args = ap.parse_args()
    t0, cpu0 = time.perf_counter(), cpu_s()
    n = collect(args.url, args.file, args.out, args.simd)
    args.result.write_text(json.dumps({"collect_s": time.perf_counter() - t0,
                                       "collect_cpu_s": cpu_s() - cpu0, "images": n}))


if __name__ == "__main__":
    main()
