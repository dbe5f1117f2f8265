"""``batchgen gallery`` (the static page) at scale: build time, page size and browser memory.

    python bench/gallery.py                        # 20,000 and 100,000; writes bench/RESULTS.md
    python bench/gallery.py --sizes 5000 --no-write

Each size gets bench/review.py's synthetic run folder (the same jobs, ledger, verdicts and one
PNG hard-linked per image). Its thumbnails are put there beforehand, one JPEG made per seed and
hard-linked at every image's thumbnail path (newer than the image, so the page reuses them): the
page build is timed alone, as a second ``batchgen gallery`` of a folder finds it. The thumbnail
pass itself is timed on a sample folder whose seeds are 1024 px noisy PNGs (so each decode costs
what a real 1K image's does), made cold and then again warm; its cost per image is the
difference over the thumbnails made.

Then Debian's chromium (through Playwright) opens the page from ``file://``:

- load: from navigation to the first screen's thumbnails decoded, and the navigation's own
  DOMContentLoaded (the page's JSON parsed, the first chunk of cards made);
- a search over every record (``apply()`` with a query, timed in the page);
- the JS heap (after a forced GC) and DOM nodes after load, then after scrolling to the last
  card (the page adds cards in chunks of 120 as the end comes near and never removes them),
  within a time budget; the PSS of every chromium process.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from results_md import write_section
from review import build_folder, chromium_pss_mb, heap

BEGIN, END = "<!-- bench/gallery.py: begin -->", "<!-- bench/gallery.py: end -->"
VIEW = {"width": 1600, "height": 1000}
SCROLL_BUDGET_S = 150.0


def run_gallery(run_dir: Path) -> dict[str, Any]:
    """``batchgen gallery DIR`` as a subprocess: wall time, its own elapsed, peak RSS."""
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "batchgen", "gallery", str(run_dir)],
                                stdout=out_f, stderr=err_f)
        # wait4, not wait: this child's own peak RSS.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    assert proc.returncode == 0, err.decode()
    line = err.decode().strip().splitlines()[-1]
    m = re.search(r"thumbnails: (\d+) made, (\d+) reused; ([\d.]+)s", line)
    assert m, line
    return {"wall_s": wall, "made": int(m[1]), "reused": int(m[2]), "elapsed_s": float(m[3]),
            "page": Path(out.decode().strip()), "usage": usage}


def link_thumbs(run_dir: Path) -> None:
    """One thumbnail per seed image, hard-linked at each image's thumbnail path."""
    from batchgen.folder.layout import thumb_relpath
    from batchgen.store.thumbs import make_thumb

    by_inode: dict[int, Path] = {}
    for seed in sorted(run_dir.glob("seed-*.png")):
        thumb = run_dir / f"{seed.stem}.jpg"
        make_thumb(seed, thumb)
        by_inode[seed.stat().st_ino] = thumb
    for sub in (run_dir / "images").iterdir():
        for entry in os.scandir(sub):
            dest = run_dir / thumb_relpath(entry.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(by_inode[entry.inode()], dest)


def thumbnail_sample(jobs: int) -> dict[str, Any]:
    from PIL import Image, ImageFilter

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        build_folder(run_dir, jobs)
        # Rewritten in place: every image is a hard link to one of these inodes.
        for k, seed in enumerate(sorted(run_dir.glob("seed-*.png"))):
            noise = [Image.effect_noise((1024, 1024), 30 + k) for _ in range(3)]
            img = Image.merge("RGB", noise).filter(ImageFilter.BoxBlur(1))
            with seed.open("r+b") as fh:
                fh.truncate(0)
                img.save(fh, format="PNG")
        png_bytes = sorted(run_dir.glob("seed-*.png"))[0].stat().st_size
        cold = run_gallery(run_dir)
        warm = run_gallery(run_dir)
    return {"sample_jobs": jobs, "png_bytes": png_bytes, "cold_s": cold["wall_s"],
            "warm_s": warm["wall_s"], "made": cold["made"],
            "per_thumb_ms": (cold["wall_s"] - warm["wall_s"]) / max(1, cold["made"]) * 1000}


def first_screen(page: Any, url: str) -> float:
    t = time.perf_counter()
    page.goto(url, timeout=120_000)
    page.wait_for_function(
        "() => { const v = [...document.querySelectorAll('.card img')]"
        ".filter(i => i.getBoundingClientRect().top < innerHeight);"
        " return v.length > 10 && v.every(i => i.complete && i.naturalWidth); }",
        timeout=120_000)
    return time.perf_counter() - t


def scroll_to_end(page: Any) -> tuple[float, int, int]:
    """Scroll to the bottom until the last card is in the DOM or the budget runs out.

    The page adds cards when its IntersectionObserver reports the end coming into view; it
    reports a change only, so a scroll back to the bottom before the next frame leaves the end
    in view with no report, and no more cards ever come (seen here at 720 of 20,000). A user
    gets going again by scrolling up a little and down; so does this loop (``nudges``)."""
    t = time.perf_counter()
    cards = nudges = 0
    while time.perf_counter() - t < SCROLL_BUDGET_S:
        before, done = page.evaluate(
            "() => { scrollTo(0, document.body.scrollHeight);"
            " return [rendered, rendered >= shown.length]; }")
        if done:
            break
        page.wait_for_timeout(100)
        if page.evaluate("() => rendered") == before:
            nudges += 1
            page.evaluate("() => scrollBy(0, -4000)")
            page.wait_for_timeout(100)
    page.wait_for_timeout(1000)
    cards = page.eval_on_selector_all(".card", "cs => cs.length")
    return time.perf_counter() - t, cards, nudges


def measure(jobs: int, chromium: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        t = time.perf_counter()
        build_folder(run_dir, jobs)
        res: dict[str, Any] = {"jobs": jobs, "built_s": time.perf_counter() - t}
        t = time.perf_counter()
        link_thumbs(run_dir)
        res["thumbs_linked_s"] = time.perf_counter() - t
        g = run_gallery(run_dir)
        assert g["made"] == 0, g  # every thumbnail reused: the page build alone
        res.update(build_s=g["wall_s"], build_elapsed_s=g["elapsed_s"], reused=g["reused"],
                   build_rss_mb=g["usage"].ru_maxrss / 1024,
                   page_bytes=g["page"].stat().st_size)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium,
                                         args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport=VIEW).new_page()
            res["load_s"] = first_screen(page, g["page"].as_uri())
            res["dcl_s"] = page.evaluate(
                "() => performance.getEntriesByType('navigation')[0]"
                ".domContentLoadedEventEnd / 1000")
            page.wait_for_timeout(500)
            res["heap_mb"], res["nodes"] = heap(page)
            res["cards_load"] = page.eval_on_selector_all(".card", "cs => cs.length")
            res["browser_pss_mb"] = chromium_pss_mb()
            res["search_ms"] = page.evaluate(
                "() => { const t = performance.now(); state.q = 'fox number 12345,';"
                " apply(); const d = performance.now() - t; state.q = ''; apply();"
                " return d; }")
            res["scroll_s"], res["cards_end"], res["nudges"] = scroll_to_end(page)
            res["heap_end_mb"], res["nodes_end"] = heap(page)
            res["browser_pss_end_mb"] = chromium_pss_mb()
            browser.close()
    return res


def table(results: list[dict[str, Any]], sample: dict[str, Any]) -> str:
    rows = [
        ("folder built (review.py's builder) + a thumbnail linked per image", None, ""),
        ("`batchgen gallery DIR`, thumbnails all there (wall, incl. start-up)", "build_s",
         "{:.1f} s"),
        ("... its peak RSS", "build_rss_mb", "{:.0f} MB"),
        ("page size", "page_bytes", "{:,} bytes"),
        ("page load to the first screen's thumbnails decoded", "load_s", "{:.2f} s"),
        ("... of which to DOMContentLoaded (JSON parsed, first 120 cards)", "dcl_s",
         "{:.2f} s"),
        ("JS heap after load (after GC)", "heap_mb", "{:.1f} MB"),
        ("DOM nodes after load (cards)", "nodes", "{}"),
        ("chromium, all its processes (PSS) after load", "browser_pss_mb", "{:.0f} MB"),
        ("a search over every record (`apply()`, in the page)", "search_ms", "{:.0f} ms"),
        (f"scrolling to the last card (budget {SCROLL_BUDGET_S:.0f} s)", "scroll_s",
         "{:.0f} s"),
        ("... times the page stopped adding cards (scrolled up 4,000 px to restart)", "nudges",
         "{}"),
        ("JS heap after scrolling (after GC)", "heap_end_mb", "{:.1f} MB"),
        ("DOM nodes there (cards)", "nodes_end", "{}"),
        ("chromium PSS there", "browser_pss_end_mb", "{:.0f} MB"),
    ]
    head = "| | " + " | ".join(f"{r['jobs']:,} images" for r in results) + " |"
    out = [head, "|---" * (len(results) + 1) + "|"]
    for label, key, fmt in rows:
        cells = []
        for r in results:
            if key is None:
                value = f"{r['built_s']:.1f} s + {r['thumbs_linked_s']:.1f} s"
            else:
                value = fmt.format(r[key])
            if key == "nodes":
                value += f" ({r['cards_load']})"
            if key == "nodes_end":
                value += f" ({r['cards_end']:,})"
            cells.append(value)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    per = sample["per_thumb_ms"]
    out.append("")
    out.append(
        f"Thumbnail pass, sample of {sample['sample_jobs']} jobs ({sample['made']} thumbnails "
        f"made from 1024 px noisy PNGs of {sample['png_bytes'] / 1e6:.1f} MB): "
        f"`batchgen gallery` cold {sample['cold_s']:.1f} s, warm {sample['warm_s']:.1f} s, "
        f"so **{per:.0f} ms a thumbnail** (wall, 2 workers, on the shared machine); at that "
        "rate " + ", ".join(f"{r['reused']:,} images take ~{r['reused'] * per / 60_000:.0f} min"
                    for r in results) + " the first time.")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--sample", type=int, default=250)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    sample = thumbnail_sample(a.sample)
    print(orjson.dumps(sample).decode(), flush=True)
    results = []
    for n in (int(x) for x in a.sizes.split(",")):
        res = measure(n, a.chromium)
        print(orjson.dumps(res).decode(), flush=True)
        results.append(res)
    text = table(results, sample)
    print(text)
    if a.no_write:
        return
    section = (
        f"{BEGIN}\n## The static gallery at 100,000 images (`bench/gallery.py`, issue 25)\n\n"
        f"`python bench/gallery.py`, {time.strftime('%Y-%m-%d')}, on the shared 2-core machine "
        f"(load average {os.getloadavg()[0]:.0f} at the end), Debian's chromium headless "
        "through Playwright, a 1600 x 1000 window, the page opened from `file://`. The same "
        "synthetic folders as the review page's (bench/review.py): a 20 x 25 matrix, 4% "
        "failed, a verdict on every tenth image.\n\n"
        f"{text}\n\n"
        "Reading it: building the page is cheap and linear once the thumbnails exist (1.9 s and"
        " 9.5 s, peak RSS 50 and 145 MB: the blob is streamed card by card), and the first "
        "thumbnail pass is what a first `batchgen gallery` of a big folder costs: ~28 ms an "
        "image on 2 workers, so ~9 min for 20,000 and ~45 min for 100,000 (less when the store "
        "made them as images landed). The page is 37 MB at 100,000 (~370 bytes a record); it "
        "still opens in about a second (DOMContentLoaded 0.8 s: the embedded JSON parsed "
        "whole), with a JS heap of 53 MB (every record held) and one chunk of 120 cards, and a "
        "search over all of it takes 12 ms. What does not hold at this size is scrolling: cards"
        " are added in chunks and never removed (no virtual scrolling, unlike the review page),"
        " so the DOM grows ~7.4 nodes a card: 147,000 nodes and 1.2 GB of browser PSS at the "
        "end of 20,000 (93 s of scrolling to get there); at 100,000 the 150 s budget reached "
        "card 27,240 with 200,000 nodes and 1.5 GB, and the whole folder would be ~740,000 "
        "nodes. The JS heap stays flat (the DOM is outside it). And the page's loading stalls: "
        "its IntersectionObserver reports changes only, so when the end is back in view before "
        "the next report, no more cards come until the user scrolls up a little (58 restarts "
        "over 20,000 cards here, driven by a script scrolling flat out; how often a person "
        "scrolling by hand meets it was not measured). For folders past a few thousand "
        "images, `batchgen review`"
        " (flat at ~2,100 nodes, see its section) is the way to browse; the static page is for "
        "sharing and for the first screens and search.\n"
        f"{END}"
    )
    write_section(section, BEGIN, END)


if __name__ == "__main__":
    main()
