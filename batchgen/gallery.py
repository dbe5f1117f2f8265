"""``batchgen gallery``: one static, self-contained HTML page to look through a run folder.

Thumbnails are made once into ``DIR/thumbs/`` and reused while newer than their image, so a
second gallery of a 10,000-image run costs seconds. The page embeds every record as one JSON blob
and renders cards in chunks as the user scrolls; nothing is fetched from the network.
"""

from __future__ import annotations

import html
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from PIL import Image, UnidentifiedImageError

from .errors import StorageError
from .ledger import LedgerRecord
from .report import latest_records, load_status

log = logging.getLogger(__name__)

GALLERY_NAME = "gallery.html"
THUMBS_DIR = "thumbs"
THUMB_PX = 256
THUMB_QUALITY = 80
_TEMPLATE = "data/gallery.html"


@dataclass(frozen=True, slots=True)
class GalleryResult:
    path: Path
    cards: int
    succeeded: int
    failed: int
    thumbs_made: int
    thumbs_reused: int
    missing: int
    elapsed_s: float


def gallery_hint(run_dir: Path) -> str:
    """One line for the end of ``run``: how to look at what it made."""
    return f"to browse the images: batchgen gallery {run_dir}"


def script_json(data: Any) -> str:
    """JSON that is inert inside <script>: no ``</script>``, ``<!--`` or entity can form."""
    raw = orjson.dumps(data)
    for char, escape in ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026")):
        raw = raw.replace(char, escape)
    # JSON allows these raw; older JS parsers read them as line ends.
    raw = raw.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")
    return raw.decode()


def make_thumb(src: Path, dst: Path, px: int = THUMB_PX) -> bool:
    """Write a JPEG thumbnail of ``src``; False (and no work) if ``dst`` is already current."""
    try:
        if dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            return False
    except FileNotFoundError:
        pass
    tmp = dst.with_name(dst.name + ".tmp")
    with Image.open(src) as img:
        # JPEG can decode straight at a fraction of its size: much faster for 4K images.
        img.draft("RGB", (px * 2, px * 2))
        img.thumbnail((px, px), Image.Resampling.BICUBIC)
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
        else:
            flat = img.convert("RGB")
    flat.save(tmp, "JPEG", quality=THUMB_QUALITY)
    os.replace(tmp, dst)
    return True


def _inside(run_dir: Path, rel: str) -> Path | None:
    """The output's path if it stays inside the run folder; a ledger is data, not trusted paths."""
    path = (run_dir / rel).resolve()
    return path if path.is_relative_to(run_dir.resolve()) else None


def _href(path: Path, base: Path) -> str:
    return quote(Path(os.path.relpath(path, base)).as_posix(), safe="/")


@dataclass(frozen=True, slots=True)
class _Card:
    rec: LedgerRecord
    image: Path | None
    thumb: Path | None


def _plan_cards(run_dir: Path, records: Iterable[LedgerRecord]) -> list[_Card]:
    thumbs = run_dir / THUMBS_DIR
    cards = []
    for rec in records:
        image = _inside(run_dir, rec.outputs[0]) if rec.succeeded and rec.outputs else None
        if image is not None and not image.is_file():
            image = None
        thumb = thumbs / f"{image.stem}.jpg" if image is not None else None
        cards.append(_Card(rec, image, thumb))
    return cards


def _thumbnail_all(cards: list[_Card], workers: int) -> tuple[int, int, set[Path]]:
    """Make the thumbnails in parallel: Pillow's decode and resize let go of the GIL."""
    todo = [(c.image, c.thumb) for c in cards if c.image is not None and c.thumb is not None]
    made = reused = 0
    broken: set[Path] = set()

    def one(pair: tuple[Path, Path]) -> bool | None:
        try:
            return make_thumb(*pair)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            log.warning("%s: no thumbnail: %s", pair[0], exc)
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (image, _), result in zip(todo, pool.map(one, todo), strict=True):
            if result is None:
                broken.add(image)
            elif result:
                made += 1
            else:
                reused += 1
    return made, reused, broken


def _card_json(card: _Card, base: Path, broken: set[Path]) -> dict[str, Any]:
    # Short keys: the blob is embedded once per page and a 10,000-image run repeats each 10,000
    # times. The page's script documents them next to where it reads them.
    r = card.rec
    d: dict[str, Any] = {
        "id": r.job_id,
        "s": r.status.value,
        "p": r.prompt,
        "m": r.model,
        "z": r.image_size,
        "a": r.aspect_ratio,
        "n": r.attempts,
        "c": round(r.cost_usd, 4),
        "l": round(r.latency_s, 2),
        "t": r.finished_at,
    }
    if r.references:
        d["r"] = list(r.references)
    if r.text:
        d["x"] = r.text
    if r.width and r.height:
        d["w"], d["h"] = r.width, r.height
    if card.image is not None:
        d["im"] = _href(card.image, base)
        if card.thumb is not None and card.image not in broken:
            d["th"] = _href(card.thumb, base)
    elif r.succeeded:
        d["miss"] = True
    if r.error is not None:
        d["ek"] = r.error.kind
        d["em"] = r.error.message
    return d


def build_gallery(run_dir: Path, out: Path | None = None, *, workers: int | None = None) -> (
    GalleryResult
):
    started = time.monotonic()
    status = load_status(run_dir)  # raises InputError when this is no run folder
    page = out or run_dir / GALLERY_NAME
    latest, _ = latest_records(run_dir)
    cards = _plan_cards(run_dir, latest.values())
    try:
        (run_dir / THUMBS_DIR).mkdir(exist_ok=True)
        made, reused, broken = _thumbnail_all(cards, workers or min(8, os.cpu_count() or 2))
    except OSError as exc:
        raise StorageError(f"cannot write thumbnails in {run_dir / THUMBS_DIR}: {exc}") from exc
    base = page.resolve().parent
    records = [_card_json(c, base, broken) for c in cards]
    title = f"batchgen: {run_dir.resolve().name}"
    summary = (
        f"{status.succeeded} images, {status.failed} failed, {status.pending} pending; "
        f"spent ${status.cost_usd:.2f}"
    )
    template = resources.files("batchgen").joinpath(_TEMPLATE).read_text("utf-8")
    text = (
        template.replace("<!--TITLE-->", html.escape(title))
        .replace("<!--SUMMARY-->", html.escape(summary))
        .replace("/*DATA*/", script_json(records))
    )
    tmp = page.with_name(page.name + ".tmp")
    try:
        page.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, "utf-8")
        os.replace(tmp, page)
    except OSError as exc:
        raise StorageError(f"cannot write {page}: {exc.strerror}") from exc
    missing = sum(1 for c in cards if c.rec.succeeded and c.image is None)
    return GalleryResult(
        path=page,
        cards=len(cards),
        succeeded=sum(1 for c in cards if c.rec.succeeded),
        failed=sum(1 for c in cards if not c.rec.succeeded),
        thumbs_made=made,
        thumbs_reused=reused,
        missing=missing,
        elapsed_s=time.monotonic() - started,
    )
