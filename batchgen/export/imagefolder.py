"""``--format imagefolder``: what ``load_dataset("imagefolder", data_dir=PATH)`` reads.

``[SPLIT/]images/<hh>/<job id>.<ext>`` (``hh``: the first two hex digits of the sha256 of the job
id, as in the run folder, so no folder holds more than a few thousand files at a million images,
and a job's file has the same name on every export) and one ``[SPLIT/]metadata.jsonl`` whose
rows hold ``file_name``, relative to it, and every column. Images are hard-linked when the run
folder and the dataset share a filesystem, else copied (or uploaded).
"""

from __future__ import annotations

from typing import IO

import orjson

from ..layout import subdir
from .fs import Target
from .source import Row
from .writer import MissingImage, Writer


def image_name(job_id: str, ext: str) -> str:
    return f"images/{subdir(job_id)}/{job_id}.{ext}"


class ImageFolderWriter(Writer):
    def __init__(self, target: Target, prefix: str, columns: list[str]) -> None:
        super().__init__(target, prefix, columns)
        self._meta: IO[bytes] | None = None

    def add(self, row: Row) -> None:
        if row.image is None:
            raise MissingImage(row.job_id)
        name = image_name(row.job_id, row.ext)
        try:
            how = self.target.place(row.image, self.prefix + name)
        except FileNotFoundError:
            if not row.image.exists():
                raise MissingImage(row.job_id) from None
            raise
        self.placed[how] = self.placed.get(how, 0) + 1
        if self._meta is None:
            self._meta = self.target.open(self.prefix + "metadata.jsonl")
            self.files += 1
        line = {"file_name": name, **{c: row.columns[c] for c in self.columns}}
        self._meta.write(orjson.dumps(line) + b"\n")
        self.rows += 1

    def close(self) -> None:
        if self._meta is not None:
            self._meta.close()
            self._meta = None
