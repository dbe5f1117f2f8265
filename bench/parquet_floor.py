"""The floor of ``batchgen export --format parquet``: the same work, by hand, with pyarrow.

    python bench/parquet_floor.py RUN_DIR OUT.parquet

Reads the ledger (orjson per line, the last line per job wins), and for each succeeded job
reads its image and writes one row: the image as ``struct<bytes, path>`` and the ledger's
scalar fields as columns, in row groups of at most 100 rows or 64 MB (batchgen's sizes), into
one file that pyarrow opens itself. What batchgen adds on top (job id order, splits, metadata
columns, the HF features, the swap into place) is what the ratio measures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

SCALARS = {"job_id": pa.string(), "name": pa.string(), "prompt": pa.string(),
           "model": pa.string(), "image_size": pa.string(), "aspect_ratio": pa.string(),
           "width": pa.int64(), "height": pa.int64(), "seed": pa.int64(),
           "sha256": pa.string(), "mime_type": pa.string(), "cost_usd": pa.float64(),
           "finished_at": pa.string(), "source": pa.string()}
ROWS, BYTES = 100, 64 << 20


def main() -> None:
    run, out = Path(sys.argv[1]), sys.argv[2]
    latest: dict[str, dict[str, object]] = {}
    with (run / "ledger.jsonl").open("rb") as fh:
        for raw in fh:
            rec = orjson.loads(raw)
            latest[rec["job_id"]] = rec
    schema = pa.schema([pa.field("image", pa.struct([("bytes", pa.binary()),
                                                     ("path", pa.string())])),
                        *(pa.field(k, t) for k, t in SCALARS.items())])
    writer = pq.ParquetWriter(out, schema)
    buf: dict[str, list[object]] = {name: [] for name in schema.names}
    size = 0
    for job_id in sorted(latest):
        rec = latest[job_id]
        if rec["status"] != "succeeded":
            continue
        rel = str(rec["outputs"][0])  # type: ignore[index]
        data = (run / rel).read_bytes()
        buf["image"].append({"bytes": data, "path": rel.rsplit("/", 1)[-1]})
        for k in SCALARS:
            buf[k].append(rec.get(k))
        size += len(data)
        if len(buf["image"]) >= ROWS or size >= BYTES:
            writer.write_table(pa.Table.from_pydict(buf, schema=schema))
            buf = {name: [] for name in schema.names}
            size = 0
    if buf["image"]:
        writer.write_table(pa.Table.from_pydict(buf, schema=schema))
    writer.close()


if __name__ == "__main__":
    main()
