"""``batchgen export``: a run folder as a dataset that training code loads as it is.

The driver: index the run folder (:mod:`.source`), learn the meta columns in one pass, then stream
every row in job id order to one writer per split (:mod:`.imagefolder`, :mod:`.webdataset`,
:mod:`.parquet`), all writing aside (:mod:`.fs`) until :meth:`Target.commit` swaps the whole
dataset in. The same folder always gives the same dataset: rows sorted by job id, splits by a
hash of it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from tqdm import tqdm

from ..errors import InputError, StorageError
from .encode import Reencode, transformed
from .fs import Target, open_target
from .naming import Namer, check_template, resolve
from .source import MetaSchema, Reviewed, Row, RunSource, column_types
from .split import parse_split, stratify
from .writer import MissingImage, Writer

log = logging.getLogger(__name__)

DEFAULT_ROWS_PER_FILE = 10_000
DEFAULT_SHARD_BYTES = 500 * 1000**2


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
               "g": 1000**3, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(value: str, option: str) -> int:
    """``500MB``, ``1GB``, ``64MiB`` or plain bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS or float(m.group(1)) * _SIZE_UNITS[unit] < 1024:
        raise InputError(f"{option} {value!r}: expected a size of at least 1KB, e.g. 500MB")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


class ExportFormat(str, enum.Enum):
    IMAGEFOLDER = "imagefolder"
    WEBDATASET = "webdataset"
    PARQUET = "parquet"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportRequest:
    run_dir: Path
    fmt: ExportFormat
    out: str
    split: str | None = None
    rows_per_file: int = DEFAULT_ROWS_PER_FILE
    shard_bytes: int = DEFAULT_SHARD_BYTES
    include_failed: bool = False
    progress: bool = True
    name: str | None = None  # --name: a template of the file names; None: the job id
    stratify: str | None = None  # --stratify: a column, or meta.KEY
    reencode: Reencode = field(default_factory=Reencode)
    reviewed: Reviewed = Reviewed.DEFAULT


@dataclass(frozen=True, slots=True)
class ExportResult:
    out: str
    fmt: ExportFormat
    rows: int
    by_split: dict[str, int]
    files: int
    placed: dict[str, int]
    missing: int
    failed_left_out: int
    not_current: int
    review_left_out: int = 0
    reviewed: Reviewed = Reviewed.DEFAULT
    meta_columns: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()
    failed_rows: int = 0  # failed jobs exported without an image (--include-failed)
    replaced: str | None = None  # the format of the export this one replaced, when another


@dataclass(frozen=True, slots=True)
class _FolderPlan:
    """For imagefolder: per split, the rows to write first; and whether JSON can type it all."""

    witnesses: dict[str, frozenset[str]]
    typed: bool


SplitOf = Callable[[Row], str]


def _folder_plan(source: RunSource, meta_columns: dict[str, tuple[str, str]],
                 split_of: SplitOf) -> _FolderPlan:
    first: dict[str, dict[str, str]] = {}  # split -> column -> first job id with a value
    for row in source.rows(meta_columns):
        cols = first.setdefault(split_of(row), {})
        for name, value in row.columns.items():
            if name not in cols and value is not None and value != []:
                cols[name] = row.job_id
    typed = len({frozenset(cols) for cols in first.values()}) > 1
    if typed:
        log.info("a column has values in one split and none in another: metadata.parquet")
    return _FolderPlan({s: frozenset(c.values()) for s, c in first.items()}, typed)


def _writer(req: ExportRequest, target: Target, prefix: str, types: dict[str, str],
            plan: _FolderPlan | None, split: str) -> Writer:
    if req.fmt is ExportFormat.IMAGEFOLDER:
        from .imagefolder import ImageFolderWriter

        assert plan is not None
        return ImageFolderWriter(target, prefix, types, witnesses=plan.witnesses.get(split,
                                 frozenset()), typed=plan.typed)
    if req.fmt is ExportFormat.WEBDATASET:
        from .webdataset import WebDatasetWriter

        return WebDatasetWriter(target, prefix, list(types), max_count=req.rows_per_file,
                                max_bytes=req.shard_bytes)
    from .parquet import ParquetWriter

    return ParquetWriter(target, prefix, types, max_rows=req.rows_per_file,
                         max_bytes=req.shard_bytes)


def _check(req: ExportRequest) -> None:
    """What can be checked before the run folder is read."""
    if req.include_failed and req.fmt is ExportFormat.IMAGEFOLDER:
        raise InputError("--include-failed: an imagefolder row needs an image; use "
                         "--format parquet or webdataset to keep the failures")
    if req.stratify is not None and req.split is None:
        raise InputError(f"--stratify {req.stratify}: needs --split, e.g. "
                         f"--split train=0.9,test=0.1 --stratify {req.stratify}")
    if req.name is not None:
        check_template(req.name)
    if req.fmt is ExportFormat.PARQUET:
        from .parquet import check_available

        check_available()


def _splitter(req: ExportRequest, source: RunSource, types: dict[str, str],
              meta_columns: dict[str, tuple[str, str]]) -> SplitOf:
    splits = parse_split(req.split)
    if req.stratify is None:
        return lambda row: splits.of(row.job_id)
    column = resolve(req.stratify, f"--stratify {req.stratify}", types, meta_columns).column

    def value(row: Row) -> str:
        return orjson.dumps(row.columns.get(column)).decode()

    strata = stratify(splits, ((row.job_id, value(row)) for row in source.rows(meta_columns)))
    return lambda row: strata.of(row.job_id, value(row))


def export(req: ExportRequest, say: Callable[[str], None] | None = None) -> ExportResult:
    """Write the dataset; ``say`` gets the lines worth telling before it is done (the replacing
    of an export of another format)."""
    t0 = time.monotonic()
    _check(req)
    with RunSource(req.run_dir, include_failed=req.include_failed,
                   reviewed=req.reviewed) as source:
        schema = MetaSchema()
        total = 0
        for _, d in source.raw():
            schema.see(d["meta"])
            total += 1
        if total == 0:
            why = f"{source.failed_left_out} failed jobs left out" if source.failed_left_out \
                else "no finished jobs"
            if source.not_current:
                why += f", {source.not_current} no longer in the manifest (jobs.jsonl)"
            if source.review_left_out:
                why += f", {source.review_left_out} {_left_by(req.reviewed)}"
            raise InputError(f"{req.run_dir}: nothing to export ({why})")
        meta_columns = schema.columns()
        types = column_types(meta_columns, include_failed=req.include_failed)
        # Every field named is checked before anything is written.
        namer = Namer(req.name, types, meta_columns) if req.name is not None else None
        try:
            split_of = _splitter(req, source, types, meta_columns)
            plan = None
            if req.fmt is ExportFormat.IMAGEFOLDER:
                plan = _folder_plan(source, meta_columns, split_of)
                if plan.typed:
                    from .parquet import check_available

                    check_available()
            target = open_target(req.out)
            replaced = None
            if target.previous is not None and target.previous.get("format") != req.fmt.value:
                replaced = str(target.previous.get("format"))
                if say is not None:
                    say(f"replacing the {replaced} export at {target.url} with a "
                        f"{req.fmt.value} one")
            writers, missing, failed_rows = _write(req, source, target, meta_columns, types,
                                                   plan, split_of, namer, total)
        finally:
            if namer is not None:
                namer.__exit__(None, None, None)
    placed: dict[str, int] = {}
    for w in writers.values():
        for how, n in w.placed.items():
            placed[how] = placed.get(how, 0) + n
    notes: list[str] = []
    if plan is not None and plan.typed:
        notes.append("metadata.parquet, not .jsonl: a column has values in one split and none "
                     "in another, which JSON cannot type")
    if namer is not None and namer.renamed:
        notes.append(f"{_n(namer.renamed, 'name')} taken twice, given a suffix (-2, -3, ...)")
    if namer is not None and namer.fallback:
        notes.append(f"{_n(namer.fallback, 'row')} with every --name field empty, named by "
                     "job id")
    return ExportResult(
        out=target.url,
        fmt=req.fmt,
        rows=sum(w.rows for w in writers.values()),
        by_split={name: w.rows for name, w in sorted(writers.items()) if name},
        files=sum(w.files for w in writers.values()),
        placed=placed,
        missing=missing,
        failed_left_out=source.failed_left_out,
        not_current=source.not_current,
        review_left_out=source.review_left_out,
        reviewed=req.reviewed,
        meta_columns={k: v[0] for k, v in meta_columns.items()},
        elapsed_s=time.monotonic() - t0,
        notes=tuple(notes),
        failed_rows=failed_rows,
        replaced=replaced,
    )


def _write(req: ExportRequest, source: RunSource, target: Target,
           meta_columns: dict[str, tuple[str, str]], types: dict[str, str],
           plan: _FolderPlan | None, split_of: SplitOf, namer: Namer | None, total: int
           ) -> tuple[dict[str, Writer], int, int]:
    """Every row to its split's writer, then the dataset swapped in: (writers, rows whose image
    is missing, failed rows written)."""
    writers: dict[str, Writer] = {}
    missing = failed_rows = 0
    bar = tqdm(total=total, unit="img", file=sys.stderr, smoothing=0.1,
               disable=not (req.progress and sys.stderr.isatty()))

    encoding = req.reencode.active

    def named() -> Iterator[Row]:
        for row in source.rows(meta_columns):
            if namer is not None:
                row = dataclasses.replace(row, stem=namer.name(row))
            if encoding:
                # Decided on the columns as they are: re-encoding changes width, height, ...
                row = dataclasses.replace(row, split=split_of(row))
            yield row

    try:
        for row in transformed(named(), req.reencode):
            split = row.split if encoding else split_of(row)
            writer = writers.get(split)
            if writer is None:
                writer = writers[split] = _writer(req, target, f"{split}/" if split else "",
                                                  types, plan, split)
            try:
                writer.add(row)
                failed_rows += row.columns.get("status") == "failed"
            except MissingImage:
                missing += 1
                log.warning("%s: its image is not in %s; left out", row.job_id, req.run_dir)
            bar.update(1)
        for writer in writers.values():
            writer.close()
        rows = sum(w.rows for w in writers.values())
        if rows == 0:
            raise InputError(f"{req.run_dir}: nothing to export (all {missing} images are "
                             "missing from the folder)")
        target.commit({
            "format": req.fmt.value,
            "run_dir": str(req.run_dir),
            "rows": rows,
            "splits": {name: w.rows for name, w in sorted(writers.items())},
            "columns": types,
            "meta_columns": {k: v[0] for k, v in meta_columns.items()},
            **({"name": req.name} if req.name else {}),
            **({"stratify": req.stratify} if req.stratify else {}),
        })
    except BaseException as exc:
        target.abort()
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write the export to {req.out}: {exc}") from exc
        raise
    finally:
        bar.close()
    return writers, missing, failed_rows


def _left_by(reviewed: Reviewed) -> str:
    if reviewed is Reviewed.ACCEPTED:
        return "not accepted left out (--reviewed accepted)"
    return "rejected left out (--reviewed all keeps them)"


def _n(count: int, what: str) -> str:
    return f"{count} {what}" if count == 1 else f"{count} {what}s"


def summary(res: ExportResult) -> str:
    images = res.rows - res.failed_rows
    what = _n(images, "image")
    if res.failed_rows:
        what += f" and {_n(res.failed_rows, 'failed job')} (no image)"
    head = f"exported {what} to {res.out} as {res.fmt.value}"
    if res.by_split:
        head += " (" + ", ".join(f"{k} {v}" for k, v in res.by_split.items()) + ")"
    parts = [head]
    if res.fmt is ExportFormat.IMAGEFOLDER:
        parts += [f"{n} {how}" for how, n in sorted(res.placed.items())]
    else:
        parts.append(_n(res.files, "file"))
    if res.failed_left_out:
        parts.append(f"{_n(res.failed_left_out, 'failed job')} left out")
    if res.not_current:
        parts.append(f"{_n(res.not_current, 'job')} no longer in the manifest left out")
    if res.review_left_out:
        parts.append(f"{_n(res.review_left_out, 'image')} {_left_by(res.reviewed)}")
    if res.missing:
        parts.append(f"{_n(res.missing, 'image')} missing from the run folder")
    parts += res.notes
    parts.append(f"{res.elapsed_s:.1f}s")
    return "; ".join(parts)
