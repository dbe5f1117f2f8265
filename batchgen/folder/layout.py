"""Where a run folder's files go: images, sidecars and thumbnails spread over 256 subfolders.

``images/<xx>/<job id>.<ext>`` with its sidecar ``images/<xx>/<job id>.json``, and the gallery's
``thumbs/<xx>/<job id>.jpg``, where ``<xx>`` (:func:`subdir`) is the first two hex digits of the
sha256 of the job id. At a million images that is ~3,900 images and as many sidecars per folder,
instead of two million files in one directory that ``ls``, file managers, ``rsync`` and network
filesystems crawl through; at ten million, ~39,000 per folder, still fine for ext4 and XFS. A hash
rather than a count per folder because the place of a file follows from its job id alone: resume,
adoption, merge and export find it without a table, in whatever order the jobs ran.

Folders from before the subfolders keep their flat ``images/<job id>.*``. The ledger names each
output by its path relative to the run folder, so those paths stay valid; whatever looks for
files without a ledger line (adoption, leftover ``.tmp`` files) looks in ``images/`` and in its
subfolders (:func:`image_dirs`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

IMAGES_DIR = "images"
SUPERSEDED_DIR = "superseded"  # where `prune` moves the images of edited or removed rows
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# Batch mode's journal (folder/batches.py): named here so `status` can look for it without
# importing the journal.
JOURNAL_NAME = "batches.jsonl"
_HEX = frozenset("0123456789abcdef")


def subdir(job_id: str) -> str:
    """The subfolder of a job's files: two hex digits of a hash of its id, the same everywhere.

    sha256, not the blake2b of ``--shard``: with the same hash, ``--shard K/256`` would put all of
    a shard's images into one folder.
    """
    import hashlib  # here, not at the top: `status` starts without it (~5 ms)

    return hashlib.sha256(job_id.encode()).hexdigest()[:2]


def thumb_relpath(image: str) -> str:
    """The gallery thumbnail of an image (a path relative to the run folder or absolute):
    ``thumbs/<xx>/<stem>.jpg``, flat and subfolder images alike."""
    stem = os.path.splitext(os.path.basename(image))[0]
    return f"thumbs/{subdir(stem)}/{stem}.jpg"


def image_dirs(images_dir: Path) -> Iterator[Path]:
    """``images/`` itself (where a folder from before the subfolders has its files), then each
    of its subfolders; nothing when there is no ``images/``."""
    if not images_dir.is_dir():
        return
    yield images_dir
    with os.scandir(images_dir) as entries:
        subs = [e.path for e in entries if len(e.name) == 2 and set(e.name) <= _HEX and e.is_dir()]
    for path in sorted(subs):
        yield Path(path)


def sidecars(images_dir: Path) -> Iterator[os.DirEntry[str]]:
    """Every ``*.json`` sidecar in ``images/`` and its subfolders."""
    for folder in image_dirs(images_dir):
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".json"):
                    yield entry


def count_images(images_dir: Path) -> int:
    n = 0
    for folder in image_dirs(images_dir):
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if not name.endswith((".json", ".tmp")) and entry.is_file():
                    n += 1
    return n


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """``run.json`` as a dict; empty when it is missing or unreadable. Here rather than on
    ``plan.RunFolder`` so that ``status`` reads it without importing the planner (~15 ms)."""
    try:
        meta = orjson.loads((run_dir / RUN_FILE).read_bytes())
        return meta if isinstance(meta, dict) else {}
    except (OSError, orjson.JSONDecodeError):
        return {}


def now_iso() -> str:
    """The time every file of a run folder is stamped with: UTC, ISO 8601, milliseconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
