"""``batchgen gallery`` rendered by a real headless Chromium: thumbnails, filters, escaping; and
the refresh a run skips on big folders."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from batchgen.fake import Rule, ThreadedFakeServer
from batchgen.reporting.gallery import REFRESH_MAX_RECORDS
from tests.helpers.cli import REPO, cli, ledger_lines, run_against
from tests.helpers.rows import _ledger_line

ARTIFACTS = REPO / "tests" / "artifacts"


DOCS_SHOT = REPO / "docs" / "gallery.png"


EVIL = "a cat </script><script>document.title='pwned'</script><b id=\"injected\">&amp; x</b>"


def browse(chromium: str, profile: Path, url: str, *mode: str) -> str:
    args = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
        "--window-size=1280,900", "--virtual-time-budget=3000", *mode, url,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Cards(HTMLParser):
    """The rendered cards of a dumped DOM: status, thumbnail src and caption text."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict[str, str]] = []
        self.ids: set[str] = set()
        self.title = ""
        self._in_title = False
        self.dialog_open = False
        self.fields: dict[str, str] = {}
        self.links: list[str] = []
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "title":
            self._in_title = True
        if tag == "div" and "card" in a.get("class", "").split():
            self.cards.append({"status": a["data-status"], "id": a["data-id"], "prompt": a["title"]})
        if tag == "img" and "thumb" in a.get("class", "").split():
            self.cards[-1]["src"] = a["src"]
        if tag == "dialog" and "open" in a:
            self.dialog_open = True
        if tag == "dd" and "data-field" in a:
            self._field = a["data-field"]
            self.fields[self._field] = ""
        if tag == "a" and "href" in a:
            self.links.append(a["href"])

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._field is not None:
            self.fields[self._field] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag == "dd":
            self._field = None


def parse(dom: str) -> Cards:
    p = Cards()
    p.feed(dom)
    return p


PROMPTS = [
    ("a cat asleep on a red sofa", "1:1"),
    ("a cat in a space suit floating above the moon", "16:9"),
    ("a dog running on a beach at sunset", "3:2"),
    ("a lighthouse in a storm, oil painting", "9:16"),
    ("a bowl of ramen, overhead shot", "4:3"),
    ("a forbidden scene that gets blocked", "1:1"),
    ("a wordy answer with no image", "1:1"),
    (EVIL, "21:9"),
]


@pytest.fixture
def run_dir(server: ThreadedFakeServer, tmp_path: Path) -> Iterator[Path]:
    server.config.full_size = True  # real pixel sizes: the thumbnails really are thumbnails
    server.config.rules = [Rule(match="forbidden", fault="block"),
                           Rule(match="wordy", fault="text_only")]
    jobs = [{"prompt": p, "aspect_ratio": ar, "output_text": i % 2 == 0}
            for i, (p, ar) in enumerate(PROMPTS)]
    manifest = tmp_path / "gallery.yaml"
    manifest.write_text(json.dumps({"jobs": jobs}))  # JSON is YAML
    out = tmp_path / "run"
    r = run_against(server, manifest, out, "--no-gallery")
    assert r.code == 1, r.output  # two permanent failures
    yield out


def test_gallery_files_and_reuse(run_dir: Path) -> None:
    r = cli("gallery", run_dir)
    assert r.code == 0, r.output
    page = run_dir / "gallery.html"
    assert r.stdout.strip().splitlines()[-1] == str(page)
    assert "6 made, 0 reused" in r.stderr
    thumbs = sorted((run_dir / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 6
    for thumb in thumbs:
        with Image.open(thumb) as img:
            assert img.format == "JPEG" and max(img.size) <= 256
    html = page.read_text()
    # No network: nothing to fetch from anywhere but the run folder.
    assert not re.search(r"(src|href)=\"?(https?:)?//", html)
    assert "document.title='pwned'</script>" not in html
    blob = html.split('<script type="application/json" id="data">', 1)[1].split("</script>")[0]
    records = json.loads(blob)
    by_id = {rec["job_id"]: rec for rec in ledger_lines(run_dir)}
    assert {rec["id"] for rec in records} == set(by_id)
    for rec in records:
        assert rec["p"] == by_id[rec["id"]]["prompt"]
        if rec["s"] == "succeeded":
            assert rec["im"].startswith("images/") and rec["th"].startswith("thumbs/")
            assert (run_dir / rec["th"]).is_file()
        else:
            assert rec["ek"] in ("blocked", "no_image") and rec["em"]
    again = cli("gallery", run_dir)
    assert again.code == 0 and "0 made, 6 reused" in again.stderr
    assert cli("gallery", run_dir.parent / "nowhere").code == 2


@pytest.mark.chromium
def test_gallery_renders_in_chromium(chromium: str, run_dir: Path, tmp_path: Path) -> None:
    assert cli("gallery", run_dir).code == 0
    url = (run_dir / "gallery.html").as_uri()
    profile = tmp_path / "profile"

    dom = parse(browse(chromium, profile, url, "--dump-dom"))
    assert len(dom.cards) == len(PROMPTS)
    ok = [c for c in dom.cards if c["status"] == "succeeded"]
    failed = [c for c in dom.cards if c["status"] == "failed"]
    assert len(ok) == 6 and len(failed) == 2
    assert all(c["src"].startswith("thumbs/") and c["src"].endswith(".jpg") for c in ok)
    assert all("src" not in c for c in failed)
    # The hostile prompt is shown as text: it neither ran nor became an element.
    assert any(c["prompt"] == EVIL for c in dom.cards)
    assert "pwned" not in dom.title and "injected" not in dom.ids

    only_failed = parse(browse(chromium, profile, url + "#status=failed", "--dump-dom"))
    assert {c["status"] for c in only_failed.cards} == {"failed"}
    assert len(only_failed.cards) == 2

    cats = parse(browse(chromium, profile, url + "?q=CAT", "--dump-dom"))
    assert len(cats.cards) == 3
    assert all("cat" in c["prompt"].lower() for c in cats.cards)

    first = next(x for x in ledger_lines(run_dir) if x["prompt"] == PROMPTS[0][0])
    details = parse(browse(chromium, profile, f"{url}#id={first['job_id']}", "--dump-dom"))
    assert details.dialog_open
    assert details.fields["prompt"] == PROMPTS[0][0] and details.fields["id"] == first["job_id"]
    assert details.fields["model text"] == first["text"]
    assert "1K" in details.fields["size"] and "1:1" in details.fields["size"]
    assert first["outputs"][0] in details.links  # type: ignore[index]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "gallery.png"
    shot.unlink(missing_ok=True)
    browse(chromium, profile, url, f"--screenshot={shot}")
    with Image.open(shot) as img:
        assert img.size == (1280, 900)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20  # not a blank page
        if not DOCS_SHOT.exists() or os.environ.get("BATCHGEN_UPDATE_SCREENSHOTS"):
            DOCS_SHOT.parent.mkdir(exist_ok=True)
            # A palette PNG: a tenth of the size and still crisp for the README.
            img.convert("RGB").quantize(colors=128).save(DOCS_SHOT, optimize=True)


@pytest.mark.parametrize("records", [REFRESH_MAX_RECORDS - 1, REFRESH_MAX_RECORDS + 1])
def test_run_skips_the_gallery_refresh_on_big_folders(tmp_path: Path, records: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with (out / "ledger.jsonl").open("wb") as fh:
        for i in range(records):
            fh.write(_ledger_line(f"old-{i}", [f"images/old-{i}.png"]))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"prompt": "one more"}\n')
    r = cli("run", manifest, "--out", out, "--fake", "--no-progress", timeout=120)
    assert r.code == 0, r.output
    hint = f"to browse the images: batchgen gallery {out}"
    if records > REFRESH_MAX_RECORDS:
        assert hint in r.stderr and not (out / "gallery.html").exists()
    else:
        assert hint not in r.stderr and (out / "gallery.html").is_file()


def test_scrolling_flat_out_reaches_the_last_card(chromium: str, tmp_path: Path) -> None:
    # The page adds cards as its end nears. bench/gallery.py, scrolling flat out over pages
    # with real thumbnails, saw it stop adding (an observer misses an end that left view and
    # came back within a frame); here, without thumbnails, it is the end-to-end check that a
    # page of thousands reaches its last card.
    from playwright.sync_api import sync_playwright

    out = tmp_path / "big"
    out.mkdir()
    n = 3000
    with (out / "ledger.jsonl").open("wb") as fh:
        for i in range(n):
            fh.write(_ledger_line(f"card-{i}", [f"images/card-{i}.png"]))
    assert cli("gallery", out).code == 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((out / "gallery.html").as_uri())
            stalled = 0
            while stalled < 10:
                before, total = page.evaluate(
                    "() => { scrollTo(0, document.body.scrollHeight);"
                    " return [rendered, shown.length]; }")
                if before >= total:
                    break
                page.wait_for_timeout(100)
                stalled = stalled + 1 if page.evaluate("() => rendered") == before else 0
            assert page.evaluate("() => [rendered, shown.length]") == [n, n]
        finally:
            browser.close()
