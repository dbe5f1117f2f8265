"""What a crash leaves in ``images/``, recovered on the next run instead of paid for again.

A ``kill -9`` after a save's files were written but before their renames leaves ``.tmp`` pairs:
a whole pair is finished (:func:`finish_tmp_pairs`). An image with its sidecar and no ledger
line (a crash between the rename and the ledger line) is adopted (:func:`adopt_orphans`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from ..folder.durable import fsync_dir
from ..folder.layout import IMAGES_DIR, image_dirs, sidecars
from ..folder.ledger import JobStatus, LedgerRecord
from ..folder.records import sha256_hex

log = logging.getLogger(__name__)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def finish_tmp_pairs(images_dir: Path, done: set[str] | frozenset[str] = frozenset()) -> int:
    """Finish the renames of saves whose ``.tmp`` files are complete; how many were finished.

    A ``kill -9`` after a save's files were written but before their renames leaves
    ``<id>.<ext>.tmp`` with ``<id>.json.tmp`` (or ``<id>.json``, if only the sidecar was renamed).
    The image was paid for: if the sidecar is a succeeded record naming that image and its
    sha256 matches the image's bytes, the pair is whole, so it is made durable and renamed into
    place (then adopted like any orphan) instead of being deleted and paid for again.
    """
    finished = 0
    for entry in os.scandir(images_dir):
        name = entry.name
        if not name.endswith(".tmp") or name.endswith(".json.tmp"):
            continue
        image = entry.path[: -len(".tmp")]
        job_id = os.path.splitext(os.path.basename(image))[0]
        if job_id in done and os.path.exists(image):
            continue  # recorded and on disk already: the tmp file is a leftover
        sidecar = os.path.join(images_dir, job_id + ".json")
        sidecar_tmp = sidecar + ".tmp"
        sidecar_src = sidecar_tmp if os.path.exists(sidecar_tmp) else sidecar
        try:
            record = LedgerRecord.from_dict(orjson.loads(Path(sidecar_src).read_bytes()))
            data = Path(entry.path).read_bytes()
        except (OSError, orjson.JSONDecodeError, KeyError, ValueError, TypeError):
            continue
        named = {os.path.basename(out) for out in record.outputs}
        if (record.status is not JobStatus.SUCCEEDED or os.path.basename(image) not in named
                or record.sha256 is None or sha256_hex(data) != record.sha256):
            continue
        try:
            for path in (sidecar_src, entry.path):
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if sidecar_src == sidecar_tmp:
                os.replace(sidecar_tmp, sidecar)
            os.replace(entry.path, image)
        except OSError as exc:
            log.warning("could not finish the save of %s: %s", image, exc)
            continue
        log.warning("%s: its save was cut short before the rename; finished it", job_id)
        finished += 1
    if finished:
        fsync_dir(images_dir)
    return finished


def adopt_orphans(run_dir: Path, done: set[str]) -> list[LedgerRecord]:
    """Images on disk with a sidecar but no succeeded ledger line: paid for, so keep them."""
    adopted: list[LedgerRecord] = []
    images_dir = run_dir / IMAGES_DIR
    for folder in image_dirs(images_dir):
        finish_tmp_pairs(folder, done)
    for entry in sidecars(images_dir):
        job_id = entry.name[: -len(".json")]
        if job_id in done:
            continue
        try:
            data: dict[str, Any] = orjson.loads(Path(entry.path).read_bytes())
            record = LedgerRecord.from_dict(data)
        except (OSError, orjson.JSONDecodeError, KeyError, ValueError, TypeError):
            log.warning("%s: unreadable sidecar, ignored", entry.path)
            continue
        if record.status is not JobStatus.SUCCEEDED or not record.outputs:
            continue
        if all((run_dir / out).is_file() for out in record.outputs):
            adopted.append(replace(record, adopted=True, turn=None))  # the turn: sidecar only
    return adopted



def adopt_redone(run_dir: Path, rejected: dict[str, str]) -> list[LedgerRecord]:
    """Redos of rejected images (``rejected``: job id -> the rejected sha256) saved with their
    sidecar but whose ledger line never got written: the ledger still names the rejected image,
    the disk holds the new one, paid for. Adopted, so ``--redo-rejected`` does not pay again."""
    from ..folder.layout import subdir

    images_dir = run_dir / IMAGES_DIR
    adopted: list[LedgerRecord] = []
    # adopt_orphans, run first, has finished the .tmp pairs (the rejected image had been moved
    # aside, so a redo's pair is finished too).
    for job_id, old_sha in rejected.items():
        sidecar = images_dir / subdir(job_id) / f"{job_id}.json"
        try:
            record = LedgerRecord.from_dict(orjson.loads(sidecar.read_bytes()))
        except FileNotFoundError:
            continue
        except (OSError, orjson.JSONDecodeError, KeyError, ValueError, TypeError):
            log.warning("%s: unreadable sidecar, ignored", sidecar)
            continue
        if (record.status is not JobStatus.SUCCEEDED or not record.outputs
                or record.job_id != job_id or record.sha256 in (None, old_sha)):
            continue
        if all((run_dir / out).is_file() for out in record.outputs):
            adopted.append(replace(record, adopted=True, turn=None))  # the turn: sidecar only
    return adopted
