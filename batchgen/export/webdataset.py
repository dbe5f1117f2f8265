"""``--format webdataset``: tar shards ``[SPLIT/]shard-000000.tar``, ``KEY.png|jpg`` + ``KEY.json``.

Written with the standard library's ``tarfile``, not the ``webdataset`` package's ``ShardWriter``:
the naming rules are all the format is (a sample is the adjacent members sharing a key; the key
is the member name up to its first dot), and ``tarfile`` lets every shard go straight to any
fsspec file object with fixed ownership and timestamps, so two exports of the same jobs are the
same bytes. ``ShardWriter`` names its own files on a local path, stamps members with the export's
clock, and would add numpy as a dependency of a plain export. The tests read the shards back with
the ``webdataset`` library itself.

A job id may hold a dot, which would end the key early, so dots become commas in the key (a job
id never holds a comma); the JSON keeps the real id.
"""

from __future__ import annotations

import datetime as dt
import io
import tarfile
from typing import IO

import orjson

from .fs import Target
from .source import Row
from .writer import Writer, read_image

_BLOCK = tarfile.BLOCKSIZE


def sample_key(job_id: str) -> str:
    return job_id.replace(".", ",")


def _member_size(n: int) -> int:
    return _BLOCK + -(-n // _BLOCK) * _BLOCK


def _mtime(finished_at: object) -> int:
    try:
        return int(dt.datetime.fromisoformat(str(finished_at)).timestamp())
    except ValueError:
        return 0


class WebDatasetWriter(Writer):
    def __init__(self, target: Target, prefix: str, columns: list[str], *,
                 max_count: int, max_bytes: int) -> None:
        super().__init__(target, prefix, columns)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._fh: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._bytes = 0

    def add(self, row: Row) -> None:
        data = read_image(row)
        meta = orjson.dumps({c: row.columns[c] for c in self.columns})
        size = _member_size(len(meta)) + (_member_size(len(data)) if data is not None else 0)
        if self._tar is not None and (
            self._count >= self.max_count or self._bytes + size > self.max_bytes
        ):
            self._close_shard()
        if self._tar is None:
            self._fh = self.target.open(f"{self.prefix}shard-{self.files:06d}.tar")
            # Closed in _close_shard, when the shard is full or the export ends.
            self._tar = tarfile.open(  # noqa: SIM115
                fileobj=self._fh, mode="w", format=tarfile.PAX_FORMAT)
            self.files += 1
        key = sample_key(row.file_stem)
        mtime = _mtime(row.columns.get("finished_at"))
        if data is not None:
            self._member(f"{key}.{row.ext}", data, mtime)
        self._member(f"{key}.json", meta, mtime)
        self._count += 1
        self._bytes += size
        self.rows += 1

    def _member(self, name: str, data: bytes, mtime: int) -> None:
        assert self._tar is not None
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = mtime
        info.mode = 0o444
        self._tar.addfile(info, io.BytesIO(data))
        # TarFile keeps every member it wrote (for reading back); a shard of 10,000 samples
        # would hold 20,000 of them, and writing needs none. getmembers() hands back that list
        # in write mode; were it ever a copy, this is a no-op and a shard's members stay bounded.
        self._tar.getmembers().clear()

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._count = self._bytes = 0

    def close(self) -> None:
        self._close_shard()
