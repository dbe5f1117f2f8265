"""Thumbnails made as images land (batchgen/store/thumbs.py), and the page a run refreshes at
its end, which makes none (issue 25)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from batchgen.fake.sized import SizedPng
from batchgen.folder.layout import subdir
from batchgen.reporting.gallery import build_gallery
from batchgen.store import thumbs as thumbs_mod
from batchgen.store.images import ImageStore
from batchgen.store.thumbs import THUMB_PX, Thumbnailer, thumb_path
from tests.helpers.rows import _ledger_line


def _cards(page: Path) -> dict[str, dict[str, object]]:
    html = page.read_text("utf-8")
    blob = html.split('<script type="application/json" id="data">', 1)[1].split("</script>")[0]
    return {str(c["id"]): c for c in json.loads(blob)}


def _save(store: ImageStore, ids: list[str]) -> None:
    png = SizedPng(600, 400, 40_000, seed=7)  # real PNG bytes, different every time

    async def go() -> None:
        for job_id in ids:
            data, _ = png.fresh()
            await store.save(job_id, data, "image/png", sidecar=b"{}\n")

    asyncio.run(go())


def test_the_store_makes_thumbnails_as_images_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run's end waits for the thumbnails only briefly; here, on a loaded test machine, for
    # all of them, so that every one can be checked.
    monkeypatch.setattr(thumbs_mod, "END_MIN_S", 60.0)
    run = tmp_path / "run"
    store = ImageStore(run, thumbnails=True)
    store.prepare()
    ids = [f"job-{i}" for i in range(6)]
    try:
        _save(store, ids)
        # The thumbnailer runs at the lowest priority: on a loaded machine give it its time
        # here, since what close() waits for is a share of the run, not every thumbnail.
        deadline = time.monotonic() + 60
        while store.thumbnailer is not None and store.thumbnailer.made < len(ids):
            assert time.monotonic() < deadline, "the thumbnailer made no progress in 60 s"
            time.sleep(0.02)
    finally:
        store.close()
    lines = b""
    for job_id in ids:
        image = store.path_for(job_id, "image/png")
        thumb = Path(thumb_path(str(run), str(image)))
        assert thumb == run / "thumbs" / subdir(job_id) / f"{job_id}.jpg"
        with Image.open(thumb) as img:
            img.load()
            assert img.format == "JPEG" and max(img.size) == THUMB_PX
        assert thumb.stat().st_mtime_ns >= image.stat().st_mtime_ns
        lines += _ledger_line(job_id, [store.relpath(job_id, "image/png")])
    assert not list((run / "thumbs").rglob("*.tmp"))
    (run / "ledger.jsonl").write_bytes(lines)
    res = build_gallery(run, thumbnails=False)  # what run does at its end
    assert (res.thumbs_made, res.thumbs_reused) == (0, 6)
    cards = _cards(res.path)
    assert all(str(cards[j]["th"]).startswith("thumbs/") for j in ids)


def test_the_end_of_a_run_shows_images_whose_thumbnail_is_not_made(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = ImageStore(run)  # no thumbnailer: none made while saving
    store.prepare()
    ids = [f"job-{i}" for i in range(8)]
    try:
        _save(store, ids)
    finally:
        store.close()
    assert not (run / "thumbs").exists()
    # A thumbnailer out of time makes what it can before it stops, maybe nothing.
    thumbs = Thumbnailer(run)
    thumbs.add([str(store.path_for(j, "image/png")) for j in ids])
    thumbs.close(budget_s=0.0)
    (run / "ledger.jsonl").write_bytes(
        b"".join(_ledger_line(j, [store.relpath(j, "image/png")]) for j in ids))
    res = build_gallery(run, thumbnails=False)
    assert res.thumbs_made == 0 and res.thumbs_reused == thumbs.made
    cards = _cards(res.path)
    with_thumb = {j for j in ids if str(cards[j]["th"]).startswith("thumbs/")}
    assert len(with_thumb) == thumbs.made
    for j in set(ids) - with_thumb:
        assert cards[j]["th"] == cards[j]["im"] == store.relpath(j, "image/png")
    # `batchgen gallery` makes the rest, and they decode.
    res = build_gallery(run)
    assert res.thumbs_made == len(ids) - thumbs.made
    for j in ids:
        with Image.open(run / "thumbs" / subdir(j) / f"{j}.jpg") as img:
            img.load()
    assert not [p for p in (run / "thumbs").rglob("*") if p.name.endswith(".tmp")]
    assert os.path.isfile(res.path)


def test_thumbnails_wait_for_a_quiet_store(tmp_path: Path) -> None:
    """A thumbnail costs several times a small image's save: while the store's writer is busy
    none is made; once it has been idle for QUIET_S they are (issue 25)."""
    run = tmp_path / "run"
    store = ImageStore(run)
    store.prepare()
    ids = [f"job-{i}" for i in range(4)]
    try:
        _save(store, ids)
    finally:
        store.close()
    thumbs = Thumbnailer(run)
    thumbs.store_idle(False)  # the writer has work
    thumbs.add([str(store.path_for(j, "image/png")) for j in ids])
    try:
        time.sleep(0.3)  # six times QUIET_S
        assert thumbs.made == 0
        assert not (run / "thumbs").exists() or not list((run / "thumbs").rglob("*.jpg"))
        thumbs.store_idle(True)  # nothing to do any more: the thumbnails come
        deadline = time.monotonic() + 60
        while thumbs.made < len(ids):
            assert time.monotonic() < deadline, "no thumbnails once the store was idle"
            time.sleep(0.02)
    finally:
        thumbs.close()
    for j in ids:
        with Image.open(run / "thumbs" / subdir(j) / f"{j}.jpg") as img:
            img.load()


def test_a_busy_store_still_gets_its_thumbnails_at_close(tmp_path: Path) -> None:
    """The writer busy to the end: close() makes what it can within its budget."""
    run = tmp_path / "run"
    store = ImageStore(run)
    store.prepare()
    ids = [f"job-{i}" for i in range(3)]
    try:
        _save(store, ids)
    finally:
        store.close()
    thumbs = Thumbnailer(run)
    thumbs.store_idle(False)
    thumbs.add([str(store.path_for(j, "image/png")) for j in ids])
    time.sleep(0.1)
    assert thumbs.made == 0
    thumbs.close(budget_s=60.0)  # generous: the machine may be loaded
    assert thumbs.made == len(ids)
