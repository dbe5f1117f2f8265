"""``batchgen gallery``: one static, self-contained HTML page to look through a run folder.

Thumbnails are made once into ``DIR/thumbs/<xx>/`` (:mod:`batchgen.layout`) and reused while newer
than their image, so a second gallery of a 10,000-image run costs seconds. The page embeds every
record as one JSON blob and renders cards in chunks as the user scrolls; nothing is fetched from
the network.
"""

from __future__ import annotations

import html
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import orjson
from PIL import UnidentifiedImageError

from ..errors import StorageError
from ..folder.current import has_current, iter_current
from ..folder.durable import atomic_write
from ..folder.layout import SUPERSEDED_DIR, thumb_relpath
from ..folder.ledger import LEDGER_NAME, LedgerRecord, iter_ledger
from ..folder.reviews import Review, Verdict, read_reviews
from ..folder.runfolder import read_meta
from ..folder.verdicts import has_reviews, verdicts
from ..store.thumbs import make_thumb
from ..words import plural
from .status import make_status

log = logging.getLogger(__name__)

GALLERY_NAME = "gallery.html"
THUMBS_DIR = "thumbs"
# `run` refreshes the page at its end only up to this many ledger records (see too_big_to_refresh).
REFRESH_MAX_RECORDS = 20_000
_THUMB_SLICE = 1024
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
    superseded: int = 0


def gallery_hint(run_dir: Path) -> str:
    """One line for the end of ``run``: how to look at what it made."""
    return f"to browse the images: batchgen gallery {run_dir}"


# What makes JSON inert inside <script>; JSON allows U+2028/2029 raw, but older JS parsers read
# them as line ends.
_SCRIPT_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


def script_json(data: Any) -> str:
    """JSON that is inert inside <script>: no ``</script>``, ``<!--`` or entity can form."""
    return _escape(orjson.dumps(data)).decode()


def _inside(root: str, rel: str) -> str | None:
    """The output's path if it stays inside the run folder; a ledger is data, not trusted paths.

    ``root`` is the run folder's real path, resolved once; the output is joined to it and
    normalised, which catches ``..`` and absolute paths without a system call per path component.
    """
    path = os.path.normpath(os.path.join(root, rel))
    return path if path.startswith(os.path.join(root, "")) else None


def _href(path: str, base: str) -> str:
    # For a normalised path under base, relpath is the rest of it; relpath itself costs more.
    prefix = os.path.join(base, "")
    rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, base)
    return quote(Path(rel).as_posix(), safe="/")


class _Card(NamedTuple):
    """One job's card while the page is planned: its JSON in pieces, not its ledger record.

    A 1,000,000-line ledger would take gigabytes as records. ``head`` is the card's JSON object
    up to the image fields, without its closing brace; ``tail`` the error fields and the closing
    brace, or ``b""`` when there is no error. Both are slices: ``orjson.dumps`` returns its bytes
    in a 4 KiB buffer, which a million cards would keep.
    """

    head: bytes
    tail: bytes
    output: str | None  # the first output of a succeeded job, as the ledger names it
    succeeded: bool
    sha256: str | None = None  # kept only when the folder has reviews (its verdict is by it)


def _card_head(r: LedgerRecord) -> bytes:
    # Short keys: the blob is embedded once per page and a 10,000-image run repeats each 10,000
    # times. The page's script documents them next to where it reads them.
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
        d["r"] = [ref.get("path") for ref in r.references]
    if r.name is not None:
        d["nm"] = r.name
    if r.source:
        d["o"] = r.source
    if r.meta:
        d["mt"] = r.meta
    if r.text:
        d["x"] = r.text
    if r.width and r.height:
        d["w"], d["h"] = r.width, r.height
    if r.replaces:
        d["rp"] = r.replaces
    if r.parents:
        d["pa"] = [p.get("job_id") for p in r.parents]
    return orjson.dumps(d)[:-1]


def _card(r: LedgerRecord, keep_sha: bool = False) -> _Card:
    tail = b""
    if r.error is not None:
        tail = orjson.dumps({"ek": r.error.kind, "em": r.error.message})[1:]
    output = r.outputs[0] if r.succeeded and r.outputs else None
    sha = r.sha256 if keep_sha and r.succeeded else None
    return _Card(_card_head(r), tail, output, r.succeeded, sha)


def _read_cards(ledger: Path, reviewed: set[str] | frozenset[str] = frozenset()
                ) -> tuple[dict[str, _Card], float]:
    """The last record per job, as its card (with its sha256 if it is ``reviewed``), and the
    spend over every line: one pass."""
    cards: dict[str, _Card] = {}
    cost = 0.0
    for rec in iter_ledger(ledger):
        cards[rec.job_id] = _card(rec, rec.job_id in reviewed)
        cost += rec.cost_usd
    return cards, cost


def _thumbnail_all(todo: list[tuple[str, str]], workers: int) -> tuple[int, int, set[str]]:
    """Make the thumbnails in parallel: Pillow's decode and resize let go of the GIL."""
    made = reused = 0
    broken: set[str] = set()

    def one(pair: tuple[str, str]) -> bool | None:
        try:
            return make_thumb(Path(pair[0]), Path(pair[1]))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            log.warning("%s: no thumbnail: %s", pair[0], exc)
            return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # In slices: a future per image of a million-image folder at once would be gigabytes.
        for start in range(0, len(todo), _THUMB_SLICE):
            part = todo[start : start + _THUMB_SLICE]
            for (image, _), result in zip(part, pool.map(one, part), strict=True):
                if result is None:
                    broken.add(image)
                elif result:
                    made += 1
                else:
                    reused += 1
    return made, reused, broken


def _current(image: str, thumb: str) -> bool:
    """Whether ``thumb`` is there and no older than ``image`` (make_thumb's test)."""
    try:
        return os.stat(thumb).st_mtime_ns >= os.stat(image).st_mtime_ns
    except OSError:
        return False


def _escape(raw: bytes) -> bytes:
    for char, escape in _SCRIPT_ESCAPES:
        if char in raw:
            raw = raw.replace(char, escape)
    return raw


def build_gallery(run_dir: Path, out: Path | None = None, *, workers: int | None = None,
                  thumbnails: bool = True) -> GalleryResult:
    """Write the page. ``thumbnails=False`` (the page ``run`` refreshes at its end) makes none:
    the store made them as images landed (store/thumbs.py), and a card whose thumbnail is not
    there yet shows its image itself, so the end of a run never decodes every image again."""
    started = time.monotonic()
    meta = read_meta(run_dir)  # raises InputError when this is no run folder
    page = out or run_dir / GALLERY_NAME
    reviewed = {r.job_id for r in read_reviews(run_dir)} if has_reviews(run_dir) else set()
    cards, cost = _read_cards(run_dir / LEDGER_NAME, reviewed)
    found = verdicts(run_dir, {k: c.sha256 for k, c in cards.items() if c.sha256}) \
        if reviewed else {}
    # jobs.jsonl read once, for both the current set and the manifest's order (a million
    # lines twice were a fifth of `run --limit 1` on a million-row manifest)
    order = [str(d["job_id"]) for d in iter_current(run_dir)] if has_current(run_dir) else None
    current = set(order) if order is not None else None
    if order is not None:
        cards = _manifest_order(cards, order)
    root = os.path.realpath(run_dir)
    thumbs = os.path.join(root, THUMBS_DIR)
    # job id -> (image, thumbnail) for the succeeded jobs whose image is there to show.
    images: dict[str, tuple[str, str]] = {}
    succeeded = missing = superseded = 0
    for job_id, card in cards.items():
        if not card.succeeded:
            continue
        old = current is not None and job_id not in current
        image = _inside(root, card.output) if card.output is not None else None
        if old:
            superseded += 1
            if image is not None and not os.path.isfile(image):
                # `batchgen prune` moved it aside, keeping its path under superseded/.
                image = _inside(root, os.path.join(SUPERSEDED_DIR, card.output or ""))
        else:
            succeeded += 1
        if image is None or not os.path.isfile(image):
            missing += 1
            continue
        images[job_id] = (image, os.path.join(root, thumb_relpath(image)))
    try:
        os.makedirs(thumbs, exist_ok=True)
        for folder in {os.path.dirname(thumb) for _, thumb in images.values()}:
            os.makedirs(folder, exist_ok=True)
        # Once per image: two jobs naming one file would race to write one thumbnail.
        todo = list(dict.fromkeys(images.values()))
        bare: set[str] = set()
        if thumbnails:
            made, reused, broken = _thumbnail_all(todo, workers or min(8, os.cpu_count() or 2))
        else:
            made, broken = 0, set()
            bare = {image for image, thumb in todo if not _current(image, thumb)}
            reused = len(todo) - len(bare)
    except OSError as exc:
        raise StorageError(f"cannot write thumbnails in {run_dir / THUMBS_DIR}: {exc}") from exc
    counted = len(cards) if current is None else sum(1 for k in cards if k in current)
    status = make_status(run_dir, meta, counted, succeeded, cost, None, current=current,
                         superseded=superseded)
    title = f"batchgen: {run_dir.resolve().name}"
    rejected = sum(1 for v in found.values() if v.verdict is Verdict.REJECTED)
    summary = (
        f"{plural(status.succeeded, 'image')}, {status.failed} failed, {status.pending} pending; "
        + (f"{superseded} superseded (edited or removed rows); " if superseded else "")
        + (f"{len(found) - rejected} accepted, {rejected} rejected; " if found else "")
        + f"spent ${status.cost_usd:.2f}"
    )
    template = resources.files("batchgen").joinpath(_TEMPLATE).read_text("utf-8")
    before, _, after = (
        template.replace("<!--TITLE-->", html.escape(title))
        .replace("<!--SUMMARY-->", html.escape(summary))
        .partition("/*DATA*/")
    )
    base = str(page.resolve().parent)
    with atomic_write(page, parents=True) as fh:
        fh.write(before.encode("utf-8"))
        fh.write(b"[")
        # The blob is written card by card, not built whole: a big folder's page would be
        # held several times over (JSON, escaped, decoded, in the page, encoded).
        sep = b""
        for job_id, card in cards.items():
            fh.write(sep)
            sep = b","
            old = current is not None and job_id not in current
            fh.write(_escape(_card_json(card, images.get(job_id), base, broken, old,
                                        found.get(job_id), bare)))
        fh.write(b"]")
        fh.write(after.encode("utf-8"))
    return GalleryResult(
        path=page,
        cards=len(cards),
        succeeded=succeeded,
        failed=status.failed,
        superseded=superseded,
        thumbs_made=made,
        thumbs_reused=reused,
        missing=missing,
        elapsed_s=time.monotonic() - started,
    )


def _manifest_order(cards: dict[str, _Card], order: list[str]) -> dict[str, _Card]:
    """The cards in manifest order (samples of a row side by side, as the manifest lists them,
    not in the order they happened to finish), then the superseded ones."""
    ordered: dict[str, _Card] = {}
    for job_id in order:
        card = cards.get(job_id)
        if card is not None:
            ordered[job_id] = card
    for job_id, card in cards.items():
        ordered.setdefault(job_id, card)
    return ordered


def _card_json(
    card: _Card, image: tuple[str, str] | None, base: str, broken: set[str],
    superseded: bool = False, review: Review | None = None, bare: set[str] | None = None,
) -> bytes:
    """The card's JSON object: head, then the image fields, then the error fields."""
    parts = [card.head]
    if superseded:
        parts.append(b',"old":true')
    if review is not None:
        parts += (b",", orjson.dumps({"v": review.verdict.value, "vn": review.note})[1:-1])
    if image is not None:
        extra: dict[str, Any] = {"im": _href(image[0], base)}
        if bare and image[0] in bare:
            extra["th"] = extra["im"]  # no thumbnail yet: the browser scales the image
        elif image[0] not in broken:
            extra["th"] = _href(image[1], base)
        parts += (b",", orjson.dumps(extra)[1:-1])
    elif card.succeeded:
        parts.append(b',"miss":true')
    parts += (b",", card.tail) if card.tail else (b"}",)
    return b"".join(parts)


def too_big_to_refresh(run_dir: Path, limit: int = REFRESH_MAX_RECORDS) -> bool:
    """Whether the ledger has more than ``limit`` lines: cheap, it stops reading past the limit.

    ``run`` then leaves the page alone and prints :func:`gallery_hint` instead of spending
    minutes at its end; ``batchgen gallery`` still builds the page for any size.
    """
    lines = 0
    try:
        with open(run_dir / LEDGER_NAME, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                lines += block.count(b"\n")
                if lines > limit:
                    return True
    except OSError:
        return False
    return False
