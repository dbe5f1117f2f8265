"""Reading job manifests (YAML, CSV, JSONL) into :class:`~batchgen.spec.JobSpec` streams.

Everything is checked before a single request is paid for, and every problem is reported at once
with file, line and field, because a user fixing a 10,000-row CSV one error per run would give up.
CSV and JSONL are streamed so a million-row dataset manifest costs no more memory than the set of
job ids seen so far.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from batchgen.catalog import ModelTable, builtin_table
from batchgen.errors import InputError, Problem
from batchgen.manifest import chains, readers
from batchgen.manifest import fields as mf
from batchgen.manifest import yaml_reader as my
from batchgen.manifest.base import Bad
from batchgen.manifest.build import State
from batchgen.manifest.chains import ChainSummary
from batchgen.manifest.columns import ColumnMap, parse_set
from batchgen.manifest.jobs import Expander
from batchgen.manifest.references import ReferenceResolver
from batchgen.spec import DEFAULT_MODEL, JobSpec

logger = logging.getLogger(__name__)

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".jsonl": "jsonl"}
# A shrink warning per row of a million-row CSV would be noise, and memory.
MAX_WARNINGS = 50


@dataclass(frozen=True, slots=True)
class ManifestHeader:
    path: Path
    fmt: str  # "yaml" | "csv" | "jsonl"
    model: str | None
    provider: str | None
    base_url: str | None


@dataclass(frozen=True, slots=True)
class ValidationSummary:
    jobs: int  # after count and matrix expansion
    by_size: dict[str, int]
    by_model: dict[str, int]
    references: int  # reference images sent, summed over all jobs
    warnings: tuple[str, ...]
    chains: ChainSummary | None = None  # None: no job hangs on another


class Manifest:
    """One manifest file. ``validate()`` first, then ``iter_jobs()`` streams the specs."""

    def __init__(
        self,
        path: Path,
        *,
        model: str | None = None,
        max_request_bytes: int = 20 * 1024 * 1024,
        models: ModelTable | None = None,
        columns: tuple[tuple[str, str], ...] = (),
        defaults: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """``columns``: ``--column FIELD=HEADER`` pairs; ``defaults``: ``--set FIELD=VALUE``
        pairs; ``models``: the model table (with ``--prices``' models), the built-in one if
        not given."""
        self.path = Path(path)
        self._name = str(path)
        fmt = FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            msg = "unknown manifest type: use .yaml, .yml, .csv or .jsonl"
            raise InputError([Problem(self._name, 0, "", msg)])
        if not self.path.is_file():
            what = "is not a file" if self.path.exists() else "does not exist"
            raise InputError([Problem(self._name, 0, "", f"manifest {what}")])
        self._fmt = fmt
        self._max_request_bytes = max_request_bytes
        self._resolver = ReferenceResolver(self.path.parent.resolve())
        self._setup: list[Problem] = []
        self._cli_model = model
        self._models = models or builtin_table()
        if model is not None:
            try:
                mf.parse_model(model, False)
                if self._models.get(model) is None:
                    self._setup.append(Problem("", 0, "--model", self._models.unknown(model)))
            except Bad as exc:
                self._setup.append(Problem(self._name, 0, "model", f"--model {exc}"))
        self._columns = ColumnMap.parse(columns, self._setup)
        parsed_defaults = parse_set(defaults, self._setup)
        self._doc: my.YamlMap | None = None
        top: dict[str, str | None] = {"model": None, "provider": None, "base_url": None}
        if fmt == "yaml":
            self._doc, top = self._load_yaml()
            named = top["model"]
            if named is not None and model is None and self._models.get(named) is None:
                line = self._doc.key_lines.get("model", 0) if self._doc is not None else 0
                self._setup.append(Problem(self._name, line, "model", self._models.unknown(named)))
        self._fallback_model = model or top["model"] or DEFAULT_MODEL
        self.header = ManifestHeader(
            path=self.path,
            fmt=fmt,
            model=model or top["model"],
            provider=top["provider"],
            base_url=top["base_url"],
        )
        self._validated_stat: tuple[int, int] | None = None
        self.chains: ChainSummary | None = None
        self._may_chain = self._scan_for_chains()
        self._expander = Expander(
            self._name, fmt, self._resolver, max_request_bytes, self._fallback_model,
            self._models, parsed_defaults,
        )  # fmt: skip
        self._expander.cli_model = model

    # -- public API ---------------------------------------------------------------------------

    def validate(self, visit: Callable[[JobSpec], None] | None = None) -> ValidationSummary:
        """Check everything; raise :class:`InputError` listing every problem found.

        ``visit``, if given, is called with every job in manifest order as it is checked, so a
        caller can count its plan in the same pass. When this raises, the jobs visited so far
        are no plan: discard whatever ``visit`` gathered.
        """
        problems: list[Problem] = []
        warnings: list[str] = []
        dropped = jobs = refs = 0
        by_size: dict[str, int] = {}
        by_model: dict[str, int] = {}
        stat_before = self._file_stat()
        for items in self._stream(check_duplicates=True):
            for item in items:
                if isinstance(item, JobSpec):
                    jobs += 1
                    if item.references:
                        refs += len(item.references)
                    size = item.image_size
                    by_size[size] = by_size.get(size, 0) + 1
                    model = item.model
                    by_model[model] = by_model.get(model, 0) + 1
                    if visit is not None:
                        visit(item)
                elif isinstance(item, Problem):
                    problems.append(item)
                elif len(warnings) < MAX_WARNINGS:
                    warnings.append(item)
                else:
                    dropped += 1
        if problems:
            # YAML defaults are merged into every job, so one bad default would repeat per job.
            # Sorted by line (the command line's problems first), as an editor would go.
            unique = dict.fromkeys(problems)
            raise InputError(sorted(unique, key=lambda p: (p.file != "", p.file, p.line)))
        if dropped:
            warnings.append(f"{self._name}: ... and {dropped} more warnings")
        self._validated_stat = stat_before
        logger.info("%s: %d jobs, %d reference images", self._name, jobs, refs)
        return ValidationSummary(jobs, by_size, by_model, refs, tuple(warnings), self.chains)

    def iter_jobs(self) -> Iterator[JobSpec]:
        """Stream the job specs in manifest order.

        Without a prior successful ``validate()`` (or if the file changed since), every check still
        runs and the first problem raises :class:`InputError`.
        """
        stat = self._file_stat()
        trusted = stat is not None and self._validated_stat == stat
        for items in self._stream(check_duplicates=not trusted):
            for item in items:
                if isinstance(item, JobSpec):
                    yield item
                elif isinstance(item, Problem):
                    raise InputError([item])

    # -- the pipeline ---------------------------------------------------------------------------

    def _file_stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None  # reading it will report the problem with the file's name
        return st.st_mtime_ns, st.st_size

    def _scan_for_chains(self) -> bool:
        """Whether the file's text has ``@`` or ``edit_of``: only then may it hold a chain, and
        only then is it read whole (:mod:`.chains`); read in blocks, memory stays flat."""
        overlap = max(len(m) for m in chains.CHAIN_MARKERS) - 1
        try:
            with self.path.open("rb") as fh:
                tail = b""
                for block in iter(lambda: fh.read(1 << 20), b""):
                    if chains.may_chain(tail + block):
                        return True
                    tail = block[-overlap:]
        except OSError:
            return False  # reading it will report the problem with the file's name
        return False

    def _stream(self, *, check_duplicates: bool) -> Iterator[Iterable[JobSpec | Problem | str]]:
        """Per row (or reader problem): its jobs, problems and warnings; a manifest that may
        hold chains comes whole, chains resolved, parents first."""
        rows = self._rows(check_duplicates=check_duplicates)
        if not self._may_chain:
            yield from rows
            return
        jobs: list[JobSpec] = []
        others: list[Problem | str] = []
        for items in rows:
            for item in items:
                if isinstance(item, JobSpec):
                    jobs.append(item)
                else:
                    others.append(item)
        resolved, problems, self.chains = chains.resolve(jobs, self._name)
        del jobs
        yield [*others, *problems, *resolved]

    def _rows(self, *, check_duplicates: bool) -> Iterator[Iterable[JobSpec | Problem | str]]:
        """Per row (or reader problem): its jobs, problems and warnings, in order.

        A list per row rather than one item at a time: a million-row manifest is mostly rows of
        one job, and every generator layer an item passes through costs per job. Only a row of
        more than ``_EAGER_JOBS`` jobs comes as an iterator, to be consumed before the next row.
        """
        if self._setup:
            yield list(self._setup)
        rows: Iterator[mf.Row | Problem]
        if self._fmt == "yaml":
            rows = readers.yaml_rows(self._doc, self._name, cli_model=self._cli_model is not None)
        elif self._fmt == "csv":
            rows = readers.csv_rows(self.path, self._name, self._columns)
        else:
            rows = readers.jsonl_rows(self.path, self._name, self._columns)
        state = State(check_duplicates)
        # _expand runs once per row, so without rows only the setup and the reader can complain.
        complained = bool(self._setup)
        n_rows = 0
        expand = self._expander.expand
        try:
            for row in rows:
                if isinstance(row, Problem):
                    complained = True
                    yield [row]
                    continue
                n_rows += 1
                yield expand(row, state)
        except OSError as exc:
            yield [Problem(self._name, 0, "", f"cannot read the manifest: {exc}")]
            return
        if n_rows == 0 and not complained:
            yield [Problem(self._name, 0, "jobs", "the manifest has no jobs")]

    def _load_yaml(self) -> tuple[my.YamlMap | None, dict[str, str | None]]:
        top: dict[str, str | None] = {"model": None, "provider": None, "base_url": None}
        try:
            doc = my.load_yaml(self.path.read_bytes())
        except my.YamlSyntaxError as exc:
            message = str(exc) if exc.plain else f"YAML syntax error: {exc}"
            self._setup.append(Problem(self._name, exc.line, exc.field, message))
            return None, top
        except OSError as exc:
            raise InputError([Problem(self._name, 0, "", f"cannot read: {exc}")]) from exc
        if not isinstance(doc, my.YamlMap):
            msg = "the file must be a mapping with a `jobs:` list"
            self._setup.append(Problem(self._name, 1, "", msg))
            return None, top
        self._setup.extend(my.check_top(doc, self._name, top))
        return doc, top
