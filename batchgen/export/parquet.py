"""``--format parquet``: ``[SPLIT/]part-000000.parquet``, at most ``--rows-per-file`` rows each.

The image is a column shaped like Hugging Face's ``Image`` feature, ``struct<bytes: binary,
path: string>``, and the schema carries the ``huggingface`` features metadata, so
``load_dataset("parquet", ...)`` decodes it to a PIL image while pyarrow, pandas, DuckDB or Spark
see plain bytes. Rows are buffered a row group at a time (at most 100 rows or 64 MB, Hugging
Face's own row group size for image datasets), so memory stays flat; a file is also closed once
it passes ``--shard-size`` bytes.
"""

from __future__ import annotations

import json
from typing import Any

from .fs import Target, require
from .source import Row
from .writer import Writer, read_image

ROW_GROUP_ROWS = 100
ROW_GROUP_BYTES = 64 << 20

_HF_DTYPE = {"string": "string", "int": "int64", "float": "float64", "bool": "bool"}


def check_available() -> None:
    require("pyarrow.parquet", "parquet")


def arrow_schema(types: dict[str, str], *, image: str | None = "image",
                 file_name: bool = False) -> Any:
    """The columns' Arrow schema, with Hugging Face's features in its metadata.

    ``image``: the name of the image column (None: none); ``file_name``: a leading ``file_name``
    column, for an imagefolder's ``metadata.parquet``.
    """
    pa = require("pyarrow", "parquet")
    arrow = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(),
             "bool": pa.bool_(),
             "references": pa.list_(pa.struct([("path", pa.string()),
                                               ("sha256", pa.string())])),
             "parents": pa.list_(pa.struct([("job_id", pa.string()),
                                            ("sha256", pa.string())]))}
    fields = []
    features: dict[str, Any] = {}
    if image is not None:
        fields.append(pa.field(image, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        features[image] = {"_type": "Image"}
    if file_name:
        fields.append(pa.field("file_name", pa.string()))
        features["file_name"] = {"dtype": "string", "_type": "Value"}
    fields += [pa.field(name, arrow[kind]) for name, kind in types.items()]
    for name, kind in types.items():
        if kind == "references":
            # A plain list is how every version of datasets writes a list feature.
            value = {"dtype": "string", "_type": "Value"}
            features[name] = [{"path": value, "sha256": value}]
        elif kind == "parents":
            value = {"dtype": "string", "_type": "Value"}
            features[name] = [{"job_id": value, "sha256": value}]
        else:
            features[name] = {"dtype": _HF_DTYPE[kind], "_type": "Value"}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.schema(fields, metadata=meta)


def leaf_paths(schema: Any) -> list[str]:
    """The Parquet column paths of an Arrow schema's leaves (``image.bytes``,
    ``references.list.element.path``, ...): what pyarrow's per-column options name."""
    pa = require("pyarrow", "parquet")

    def walk(kind: Any, prefix: str) -> list[str]:
        if pa.types.is_struct(kind):
            return [p for f in kind for p in walk(f.type, f"{prefix}.{f.name}")]
        if pa.types.is_list(kind):
            return walk(kind.value_type, f"{prefix}.list.element")
        return [prefix]

    return [p for f in schema for p in walk(f.type, f.name)]


class ParquetWriter(Writer):
    def __init__(self, target: Target, prefix: str, types: dict[str, str], *,
                 max_rows: int, max_bytes: int) -> None:
        super().__init__(target, prefix, list(types))
        self._pa = require("pyarrow", "parquet")
        self._pq = require("pyarrow.parquet", "parquet")
        self.schema = arrow_schema(types)
        # Every column dictionary-encoded (pyarrow's default) but the image bytes: each is
        # distinct, so a dictionary of them is hashing and memory spent to be thrown away.
        self._options = {"use_dictionary": [
            path for path in leaf_paths(self.schema) if path != "image.bytes"]}
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._buf: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self._buf_rows = 0
        self._buf_bytes = 0
        self._fh: Any = None
        self._writer: Any = None
        self._file_rows = 0
        self._file_bytes = 0

    def add(self, row: Row) -> None:
        data = read_image(row)
        image = None if data is None else {"bytes": data, "path": f"{row.file_stem}.{row.ext}"}
        self._buf["image"].append(image)
        for name in self.columns:
            self._buf[name].append(row.columns[name])
        self._buf_rows += 1
        self._buf_bytes += len(data or b"") + len(row.columns.get("prompt") or "")
        self.rows += 1
        if self._file_rows + self._buf_rows >= self.max_rows:
            self._flush()
            self._close_file()
        elif self._buf_rows >= ROW_GROUP_ROWS or self._buf_bytes >= ROW_GROUP_BYTES:
            self._flush()
            if self._file_bytes >= self.max_bytes:
                self._close_file()

    def _flush(self) -> None:
        if not self._buf_rows:
            return
        if self._writer is None:
            rel = f"{self.prefix}part-{self.files:06d}.parquet"
            local = self.target.local_path(rel)
            if local is not None:
                # pyarrow's own file: write_table fed through a Python file object was 74% of
                # an export of 1 MB images (issue 25; bench/RESULTS.md, "At a million rows")
                self._writer = self._pq.ParquetWriter(local, self.schema, **self._options)
            else:
                self._fh = self.target.open(rel)
                self._writer = self._pq.ParquetWriter(self._fh, self.schema, **self._options)
            self.files += 1
        table = self._pa.Table.from_pydict(self._buf, schema=self.schema)
        self._writer.write_table(table, row_group_size=self._buf_rows)
        self._file_rows += self._buf_rows
        self._file_bytes += self._buf_bytes
        self._buf = {name: [] for name in self.schema.names}
        self._buf_rows = self._buf_bytes = 0

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._file_rows = self._file_bytes = 0

    def close(self) -> None:
        self._flush()
        self._close_file()
