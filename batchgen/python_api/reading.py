"""``batchgen.status``, ``batchgen.records``, ``batchgen.to_dataset``: a run folder read back.

Like ``batchgen status`` and ``batchgen export``, these read the folder alone (no manifest, no
key) and may run while a run writes to it: the ledger's last line per job wins and a torn tail
is skipped, as everywhere.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..folder.current import CURRENT_NAME, iter_current
from ..folder.ledger import (
    LEDGER_NAME,
    ErrorInfo,
    JobStatus,
    LedgerRecord,
    iter_lines,
    iter_records,
)

if TYPE_CHECKING:
    from ..reporting.status import Status

PathLike = str | os.PathLike[str]
# A library prints nothing unless its caller configures logging (else Python's last-resort
# handler would write batchgen's warnings to stderr).
logging.getLogger("batchgen").addHandler(logging.NullHandler())


def _folder(folder: PathLike) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{path}: no such run folder")
    if not (path / LEDGER_NAME).is_file() and not (path / "run.json").is_file():
        raise InputError(f"{path}: not a batchgen run folder (no ledger.jsonl or run.json)")
    return path


def status(folder: PathLike) -> Status:
    """The folder's counts and spend, as ``batchgen status --json`` shows them (``.to_json()``)."""
    from ..reporting.status import load_status

    return load_status(_folder(folder))


@dataclass(frozen=True, slots=True)
class Record:
    """One job's outcome: its last ledger line, with the manifest's current labels.

    ``image`` is the image's path (None for a failure); ``ledger`` is the whole ledger line
    (usage, text, timings, grounding metadata, ...).
    """

    job_id: str
    status: JobStatus
    name: str | None
    prompt: str
    meta: dict[str, Any]
    vars: dict[str, str]
    image: Path | None
    cost_usd: float
    error: ErrorInfo | None
    ledger: LedgerRecord = field(repr=False)

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED


def records(folder: PathLike, *, failed: bool = True) -> Iterator[Record]:
    """Every job's last outcome, in the order the ledger finished them.

    When the folder has ``jobs.jsonl`` (the manifest's jobs now), only those jobs come back,
    with its ``name``, ``meta`` and ``vars`` (an edited label shows without a new run), as in
    ``batchgen export``. ``failed=False``: succeeded jobs only. Holds a line number per job in
    memory, and the current labels when there is a ``jobs.jsonl``; the records themselves
    stream.
    """
    path = _folder(folder)
    ledger = path / LEDGER_NAME
    last: dict[str, int] = {}
    for lineno, _, d in iter_lines(ledger):
        if isinstance(d.get("job_id"), str):
            last[d["job_id"]] = lineno
    current: dict[str, dict[str, Any]] | None = None
    if (path / CURRENT_NAME).is_file():
        current = {d["job_id"]: d for d in iter_current(path)}
    for lineno, _, rec in iter_records(ledger):
        if last.get(rec.job_id) != lineno or (not failed and not rec.succeeded):
            continue
        labels: dict[str, Any] = {}
        if current is not None:
            if rec.job_id not in current:
                continue  # no longer in the manifest
            labels = current[rec.job_id]
        meta = labels.get("meta") if isinstance(labels.get("meta"), dict) else rec.meta
        found_vars = labels.get("vars") if isinstance(labels.get("vars"), dict) else rec.vars
        yield Record(
            job_id=rec.job_id, status=rec.status, name=labels.get("name", rec.name),
            prompt=rec.prompt, meta=dict(meta or {}), vars=dict(found_vars or {}),
            image=_image(path, rec), cost_usd=rec.cost_usd, error=rec.error, ledger=rec,
        )


def _image(folder: Path, rec: LedgerRecord) -> Path | None:
    if not rec.succeeded:
        return None
    for rel in rec.outputs:
        norm = os.path.normpath(rel)
        if rel.endswith(".json") or os.path.isabs(norm) or norm == ".." \
                or norm.startswith("../"):
            continue
        return folder / norm
    return None


def to_dataset(folder: PathLike, *, include_failed: bool = False) -> Any:
    """The folder as a ``datasets.Dataset``: the columns of ``batchgen export`` (vars and meta
    included) and an ``image`` column that loads each image from the run folder.

    Needs the ``datasets`` package (``pip install datasets``). Built through ``datasets``' own
    cache, keyed on the ledger's and ``jobs.jsonl``'s size and time, so it is rebuilt after
    every run and reused otherwise. ``datasets``' progress bars are off while it builds.
    """
    path = _folder(folder)
    try:
        datasets: Any = importlib.import_module("datasets")
    except ImportError:
        raise InputError("to_dataset needs the Python package datasets, which is not "
                         "installed: pip install datasets") from None
    from ..export.source import MetaSchema, RunSource, column_types

    total = 0
    with RunSource(path, include_failed=include_failed) as source:
        schema = MetaSchema()
        for _, d in source.raw():
            schema.see(d["meta"])
            total += 1
    meta_columns = schema.columns()
    types = column_types(meta_columns, include_failed=include_failed)
    features = datasets.Features({"image": datasets.Image(), **{
        name: _feature(datasets, kind) for name, kind in types.items()}})
    stamp = hashlib.sha256(repr([_stat(path / name) for name in (LEDGER_NAME, CURRENT_NAME)])
                           .encode()).hexdigest()
    if total == 0:  # from_generator refuses a generator that yields nothing
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.Dataset.from_generator(
            _rows, features=features,
            gen_kwargs={"folder": str(path.resolve()), "include_failed": include_failed,
                        "meta_columns": meta_columns, "stamp": stamp})
    finally:
        if bars:
            datasets.enable_progress_bars()


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _feature(datasets: Any, kind: str) -> Any:
    if kind == "references":
        return [{"path": datasets.Value("string"), "sha256": datasets.Value("string")}]
    if kind == "parents":  # chains (issue 22): the jobs and images a job was made from
        return [{"job_id": datasets.Value("string"), "sha256": datasets.Value("string")}]
    return datasets.Value({"string": "string", "int": "int64", "float": "float64",
                           "bool": "bool"}[kind])


def _rows(folder: str, include_failed: bool, meta_columns: dict[str, tuple[str, str]],
          stamp: str) -> Iterator[dict[str, Any]]:
    """The dataset's rows, for ``Dataset.from_generator`` (``stamp`` only keys its cache)."""
    from ..export.source import RunSource

    with RunSource(Path(folder), include_failed=include_failed) as source:
        for row in source.rows(meta_columns):
            image = None if row.image is None or not row.image.is_file() else {
                "path": str(row.image), "bytes": None}
            if image is None and not include_failed:
                continue  # its file was deleted by hand; export leaves it out too
            yield {"image": image, **row.columns}
