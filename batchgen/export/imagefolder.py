"""``--format imagefolder``: what ``load_dataset("imagefolder", data_dir=PATH)`` reads.

``[SPLIT/]images/<xx>/<job id>.<ext>`` (``xx`` as in the run folder, :func:`layout.subdir`, so no
folder holds more than a few thousand files at a million images, and a job's file has the same
name on every export) and one ``[SPLIT/]metadata.jsonl`` whose rows hold ``file_name``, relative
to it, and every column. Images are hard-linked when the run folder and the dataset share a
filesystem, else copied (or uploaded).

JSON carries no types, so ``datasets`` infers each column's type from the values it sees first
(the first 10 MB of each metadata file) and refuses split folders whose metadata disagree. Two
rules keep that inference right:

- in each metadata.jsonl, the rows that first give each column a value (``witnesses``) are
  written first, so a column that is empty for the first hundred thousand rows still gets its
  type;
- when a column has values in one split and none in another (a sparse meta field, a seed set on
  a few jobs), JSON cannot say what the empty one holds, so every split gets a
  ``metadata.parquet`` with the explicit schema instead (``datasets`` reads it the same way).
"""

from __future__ import annotations

import shutil
import tempfile
from typing import IO, Any

import orjson

from ..folder.layout import subdir
from .fs import Target, require
from .source import Row
from .writer import MissingImage, Writer

_PARQUET_BATCH = 10_000


def image_name(stem: str, ext: str) -> str:
    """``images/<xx>/<stem>.<ext>``: the stem is the job id, or the ``--name`` it was given."""
    return f"images/{subdir(stem)}/{stem}.{ext}"


class ImageFolderWriter(Writer):
    def __init__(self, target: Target, prefix: str, types: dict[str, str], *,
                 witnesses: frozenset[str] = frozenset(), typed: bool = False) -> None:
        super().__init__(target, prefix, list(types))
        self.types = types
        self.witnesses = witnesses
        self.typed = typed
        self._head: list[bytes] = []
        self._body: IO[bytes] | None = None
        self._batch: list[dict[str, Any]] = []
        self._pq_fh: IO[bytes] | None = None
        self._pq: Any = None

    def add(self, row: Row) -> None:
        if row.image is None:
            raise MissingImage(row.job_id)
        name = image_name(row.file_stem, row.ext)
        try:
            how = (self.target.place(row.image, self.prefix + name) if row.data is None
                   else self.target.put(row.data, self.prefix + name))
        except FileNotFoundError:
            if not row.image.exists():
                raise MissingImage(row.job_id) from None
            raise
        self.placed[how] = self.placed.get(how, 0) + 1
        record = {"file_name": name, **{c: row.columns[c] for c in self.columns}}
        self.rows += 1
        if self.typed:
            self._batch.append(record)
            if len(self._batch) >= _PARQUET_BATCH:
                self._flush_parquet()
            return
        line = orjson.dumps(record) + b"\n"
        if row.job_id in self.witnesses:
            self._head.append(line)
            return
        if self._body is None:
            # The rest waits in a local temporary file until the witnesses are all known.
            self._body = tempfile.TemporaryFile(prefix="batchgen-metadata-")  # noqa: SIM115
        self._body.write(line)

    def _flush_parquet(self) -> None:
        from .parquet import arrow_schema

        if not self._batch:
            return
        pa = require("pyarrow", "parquet")
        if self._pq is None:
            pq = require("pyarrow.parquet", "parquet")
            self._schema = arrow_schema(self.types, image=None, file_name=True)
            self._pq_fh = self.target.open(self.prefix + "metadata.parquet")
            self._pq = pq.ParquetWriter(self._pq_fh, self._schema)
            self.files += 1
        columns = {name: [r[name] for r in self._batch] for name in self._schema.names}
        self._pq.write_table(pa.Table.from_pydict(columns, schema=self._schema))
        self._batch = []

    def close(self) -> None:
        if self.typed:
            self._flush_parquet()
            if self._pq is not None:
                self._pq.close()
                self._pq = None
            if self._pq_fh is not None:
                self._pq_fh.close()
                self._pq_fh = None
            return
        if not self._head and self._body is None:
            return
        with self.target.open(self.prefix + "metadata.jsonl") as fh:
            fh.writelines(self._head)
            if self._body is not None:
                self._body.seek(0)
                shutil.copyfileobj(self._body, fh, 1 << 20)
        self.files += 1
        if self._body is not None:
            self._body.close()
            self._body = None
        self._head = []
