"""The reference clients the throughput scenario compares batchgen against.

    python bench/clients.py bare|durable|sdk --manifest M.jsonl --url URL --out DIR \
        --concurrency C --result RESULT.json

``bare``: aiohttp + asyncio.Semaphore, the same JSON body batchgen sends, the image base64-decoded
and written to a file (no fsync, no sidecar, no ledger). ``durable``: the same loop, but each
image is made as durable as batchgen makes it (tmp file, fsync, rename, in a worker thread via
``asyncio.to_thread``) and then gets a line in a ledger file, written and flushed from the event
loop; no sidecar. ``sdk``: the official google-genai SDK's
``client.aio.models.generate_content`` with a semaphore, images written the same way as ``bare``.
``promises``: the durable loop keeping every promise batchgen keeps (issue 25's small-image
floor): an intent line before each send, fsync'd once for all the requests ready together; the
image and a JSON sidecar each tmp + fsync + rename (sidecar first) in a worker thread; the
directory fsync'd once for the renames done together; then a ledger line, flushed, and fsync'd
in groups that nobody waits for (as batchgen's ledger does).

Each runs in its own process (started by ``bench/run.py``) so its peak RSS can be read on its
own. The result file gets the run phase's wall time (from before the first request until the
last image is written and the HTTP session is closed) and the CPU seconds it used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import orjson

KEY = "fake-key"
MODEL = "gemini-3-pro-image"


def read_prompts(manifest: Path) -> list[str]:
    with manifest.open("rb") as fh:
        return [str(orjson.loads(line)["prompt"]) for line in fh if line.strip()]


def request_body(prompt: str) -> bytes:
    """Byte for byte what batchgen's GeminiClient.build_request sends for these jobs."""
    return orjson.dumps(
        {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {
                "responseModalities": ["IMAGE"],
                "imageConfig": {"aspectRatio": "1:1", "imageSize": "1K"},
            },
        }
    )


def final_image(answer: dict[str, Any]) -> bytes:
    """The last non-thought inline image of an answer, decoded."""
    parts = answer["candidates"][0]["content"]["parts"]
    for part in reversed(parts):
        inline = part.get("inlineData") or part.get("inline_data")
        if inline and not part.get("thought"):
            return base64.b64decode(inline["data"])
    raise ValueError("no image in the answer")


def write_durably(path: Path, data: bytes) -> None:
    """What a careful hand-written client would do: tmp file, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def run_bare(url: str, prompts: list[str], concurrency: int, out: Path) -> int:
    import aiohttp

    endpoint = f"{url}/v1beta/models/{MODEL}:generateContent"
    sem = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/json"}
    written = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int, prompt: str) -> None:
            nonlocal written
            body = request_body(prompt)
            async with sem:
                async with session.post(
                    endpoint, params={"key": KEY}, data=body, headers=headers
                ) as resp:
                    raw = await resp.read()
                    resp.raise_for_status()
                data = final_image(orjson.loads(raw))
                del raw
                (out / f"{i:07d}.png").write_bytes(data)
                written += 1

        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return written


async def run_durable(url: str, prompts: list[str], concurrency: int, out: Path) -> int:
    """``run_bare`` with batchgen's durability for the image and a flushed ledger line."""
    import aiohttp

    endpoint = f"{url}/v1beta/models/{MODEL}:generateContent"
    sem = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/json"}
    written = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    with (out / "ledger.jsonl").open("ab") as ledger:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int, prompt: str) -> None:
                nonlocal written
                body = request_body(prompt)
                async with sem:
                    async with session.post(
                        endpoint, params={"key": KEY}, data=body, headers=headers
                    ) as resp:
                        raw = await resp.read()
                        resp.raise_for_status()
                    data = final_image(orjson.loads(raw))
                    del raw
                    name = f"{i:07d}.png"
                    await asyncio.to_thread(write_durably, out / name, data)
                    line = {"job": i, "prompt": prompt, "status": "succeeded", "output": name}
                    ledger.write(orjson.dumps(line) + b"\n")
                    ledger.flush()
                    written += 1

            await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return written


class GroupSync:
    """One fsync for everything written before it started; later writers wait for the next."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        self.synced = 0
        self.task: asyncio.Task[None] | None = None

    def wrote(self) -> int:
        self.written += 1
        return self.written

    async def wait(self, upto: int) -> None:
        while self.synced < upto:
            if self.task is None:
                self.task = asyncio.ensure_future(self._run())
            await asyncio.shield(self.task)

    def soon(self) -> None:
        if self.task is None and self.synced < self.written:
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        upto = self.written
        try:
            await asyncio.to_thread(os.fsync, self.fd)
            self.synced = max(self.synced, upto)
        finally:
            self.task = None


def write_pair(folder: Path, name: str, data: bytes, sidecar: bytes) -> None:
    """Sidecar and image to tmp names, both fsync'd, then renamed: the sidecar first."""
    paths = []
    for path, body in ((folder / (name + ".json"), sidecar), (folder / name, data)):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        paths.append((tmp, path))
    for tmp, path in paths:
        os.replace(tmp, path)


async def run_promises(url: str, prompts: list[str], concurrency: int, out: Path) -> int:
    """``run_durable`` with batchgen's promises kept by hand (see the module docstring)."""
    import hashlib

    import aiohttp

    endpoint = f"{url}/v1beta/models/{MODEL}:generateContent"
    sem = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/json"}
    written = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    images = out / "images"
    images.mkdir(exist_ok=True)
    dir_fd = os.open(images, os.O_RDONLY)
    with (out / "intents.jsonl").open("ab") as intents, \
            (out / "ledger.jsonl").open("ab") as ledger:
        intent_sync, dir_sync = GroupSync(intents.fileno()), GroupSync(dir_fd)
        ledger_sync = GroupSync(ledger.fileno())
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int, prompt: str) -> None:
                nonlocal written
                body = request_body(prompt)
                async with sem:
                    intents.write(orjson.dumps({"job": i, "price": 0.134}) + b"\n")
                    intents.flush()
                    await intent_sync.wait(intent_sync.wrote())
                    async with session.post(
                        endpoint, params={"key": KEY}, data=body, headers=headers
                    ) as resp:
                        raw = await resp.read()
                        resp.raise_for_status()
                    data = final_image(orjson.loads(raw))
                    del raw
                    name = f"{i:07d}.png"
                    line = orjson.dumps({"job": i, "prompt": prompt, "status": "succeeded",
                                         "output": name,
                                         "sha256": hashlib.sha256(data).hexdigest()})
                    await asyncio.to_thread(write_pair, images, name, data, line)
                    await dir_sync.wait(dir_sync.wrote())
                    ledger.write(line + b"\n")
                    ledger.flush()
                    ledger_sync.wrote()
                    ledger_sync.soon()
                    written += 1

            await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        await ledger_sync.wait(ledger_sync.written)
    os.close(dir_fd)
    return written


async def run_sdk(url: str, prompts: list[str], concurrency: int, out: Path) -> int:
    from google import genai
    from google.genai import types

    client = genai.Client(
        api_key=KEY, http_options=types.HttpOptions(base_url=url, api_version="v1beta")
    )
    config = types.GenerateContentConfig(
        response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio="1:1")
    )
    sem = asyncio.Semaphore(concurrency)
    written = 0

    async def one(i: int, prompt: str) -> None:
        nonlocal written
        async with sem:
            resp = await client.aio.models.generate_content(
                model=MODEL, contents=prompt, config=config
            )
            content = resp.candidates[0].content if resp.candidates else None
            parts = content.parts if content is not None else None
            data = None
            for part in reversed(parts or []):
                if part.inline_data is not None and not part.thought:
                    data = part.inline_data.data
                    break
            if data is None:
                raise ValueError("no image in the answer")
            (out / f"{i:07d}.png").write_bytes(data)
            written += 1

    try:
        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    finally:
        await client.aio.aclose()
    return written


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["bare", "durable", "promises", "sdk"])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--result", type=Path, required=True)
    args = ap.parse_args()
    prompts = read_prompts(args.manifest)
    args.out.mkdir(parents=True, exist_ok=True)
    run = {"bare": run_bare, "durable": run_durable, "promises": run_promises,
           "sdk": run_sdk}[args.kind]
    t0, cpu0 = time.perf_counter(), cpu_s()
    written = asyncio.run(run(args.url, prompts, args.concurrency, args.out))
    run_s, run_cpu_s = time.perf_counter() - t0, cpu_s() - cpu0
    args.result.write_text(json.dumps({"run_s": run_s, "run_cpu_s": run_cpu_s, "images": written}))


if __name__ == "__main__":
    main()
