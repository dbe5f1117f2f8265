"""Reading job manifests (YAML, CSV, JSONL) into :class:`~batchgen.spec.JobSpec` streams.

Everything is checked before a single request is paid for, and every problem is reported at once
with file, line and field, because a user fixing a 10,000-row CSV one error per run would give up.
CSV and JSONL are streamed so a million-row dataset manifest costs no more memory than the set of
job ids seen so far.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import orjson

from batchgen import _manifest_fields as mf
from batchgen import _manifest_readers as readers
from batchgen import _manifest_yaml as my
from batchgen.errors import InputError, Problem
from batchgen.references import (
    ReferenceProblem,
    ReferenceResolver,
    reference_budget,
    request_bytes,
)
from batchgen.spec import DEFAULT_IMAGE_SIZE, DEFAULT_MODEL, KNOWN_MODELS, JobSpec, Reference

logger = logging.getLogger(__name__)

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".jsonl": "jsonl"}
# A shrink warning per row of a million-row CSV would be noise, and memory.
MAX_WARNINGS = 50
_DEPRECATED_MODELS = {"gemini-3-pro-image-preview": "shut down on 2026-06-25"}
# A row's jobs are built into a list up to this many; a bigger row (count, vars) streams.
_EAGER_JOBS = 256


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


class Manifest:
    """One manifest file. ``validate()`` first, then ``iter_jobs()`` streams the specs."""

    def __init__(
        self,
        path: Path,
        *,
        model: str | None = None,
        max_request_bytes: int = 20 * 1024 * 1024,
    ) -> None:
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
        if model is not None:
            try:
                mf.parse_model(model, False)
            except mf.Bad as exc:
                self._setup.append(Problem(self._name, 0, "model", f"--model {exc}"))
        self._doc: my.YamlMap | None = None
        top: dict[str, str | None] = {"model": None, "provider": None, "base_url": None}
        if fmt == "yaml":
            self._doc, top = self._load_yaml()
        self._fallback_model = model or top["model"] or DEFAULT_MODEL
        self.header = ManifestHeader(
            path=self.path,
            fmt=fmt,
            model=model or top["model"],
            provider=top["provider"],
            base_url=top["base_url"],
        )
        self._validated_stat: tuple[int, int] | None = None
        # The hashed settings of a job with every default, split around its prompt: the JSON
        # :func:`_job_digest` hashes is ``head + orjson.dumps(prompt) + tail``.
        marker = "prompt goes here"
        payload = _job_payload(self._fallback_model, marker, [], None, DEFAULT_IMAGE_SIZE, False,
                               None, None, 0, None)  # fmt: skip
        head, _, tail = orjson.dumps(payload).partition(orjson.dumps(marker))
        self._default_payload = (head, tail)

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
            raise InputError(list(dict.fromkeys(problems)))
        if dropped:
            warnings.append(f"{self._name}: ... and {dropped} more warnings")
        self._validated_stat = stat_before
        logger.info("%s: %d jobs, %d reference images", self._name, jobs, refs)
        return ValidationSummary(jobs, by_size, by_model, refs, tuple(warnings))

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

    def _stream(self, *, check_duplicates: bool) -> Iterator[Iterable[JobSpec | Problem | str]]:
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
            rows = readers.csv_rows(self.path, self._name)
        else:
            rows = readers.jsonl_rows(self.path, self._name)
        state = _State(check_duplicates)
        # _expand runs once per row, so without rows only the setup and the reader can complain.
        complained = bool(self._setup)
        n_rows = 0
        expand = self._expand
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

    def _expand(self, row: mf.Row, state: _State) -> Iterable[JobSpec | Problem | str]:
        """One row or YAML job -> its problems, or its jobs (count x matrix) and warnings."""
        fields = row.fields
        if len(fields) == 1:
            # A prompt and nothing else: parse_row would give {"prompt": raw.strip()}, no problem.
            raw = fields.get("prompt")
            if type(raw) is str:
                stripped = raw.strip()
                if stripped:
                    return self._prompt_only(row.line, stripped, state)
        name = self._name
        problems = state.problems
        values = mf.parse_row(row, self._fmt, name, problems)
        prompt: str | None = values.get("prompt")
        images: tuple[str, ...] = values.get("images", ())
        references: list[Reference] = []
        for source in images:
            try:
                references.append(self._resolver.resolve(source))
            except ReferenceProblem as exc:
                problems.append(Problem(name, row.line_of("images"), "images", str(exc)))
        matrix: tuple[tuple[str, tuple[str, ...]], ...] = values.get("vars", ())
        if matrix and prompt is not None:
            for message in mf.check_template(prompt, [n for n, _ in matrix]):
                problems.append(Problem(name, row.line_of("prompt"), "prompt", message))
        count: int = values.get("count", 1)
        n_jobs = mf.row_jobs(matrix, count) if matrix else count
        if n_jobs > mf.MAX_ROW_JOBS:  # checked before expanding: a typo must not run for minutes
            sizes = " x ".join(str(len(v)) for _, v in matrix)
            times = f" x count {count}" if count > 1 else ""
            msg = (
                f"expands to {n_jobs:,} jobs ({sizes}{times}); "
                f"at most {mf.MAX_ROW_JOBS:,} per row, split it over several rows or files"
            )
            problems.append(Problem(name, row.line_of("vars"), "vars", msg))
        user_id: str | None = values.get("id")
        if user_id is not None and state.user_ids is not None:
            other = state.user_ids.setdefault(user_id, row.line)
            if other != row.line:
                msg = f"duplicate id {user_id!r}: also used on line {other}"
                problems.append(Problem(name, row.line_of("id"), "id", msg))
        model: str = values.get("model") or self._fallback_model
        out: list[JobSpec | Problem | str] = []
        if references and not problems:
            warning = self._check_budget(row, references, state)
            if warning and not problems:
                out.append(warning)
        if problems:
            out.extend(problems)
            problems.clear()
            return out
        assert prompt is not None
        if model not in state.models_seen:
            self._first_use(out, model, row.line, state)
        refs = tuple(references)
        if matrix:
            jobs = self._build_matrix(row, values, prompt, model, refs, matrix, state)
        else:
            jobs = self._build_plain(row, values, prompt, model, refs, state)
        if n_jobs <= _EAGER_JOBS:
            out.extend(jobs)
            return out
        return itertools.chain(out, jobs)  # a row of many jobs streams: memory stays flat

    def _first_use(
        self, out: list[JobSpec | Problem | str], model: str, line: int, state: _State
    ) -> None:
        """The warning, if any, for the first job that uses ``model``."""
        state.models_seen.add(model)
        if model in _DEPRECATED_MODELS:
            why = _DEPRECATED_MODELS[model]
            out.append(f"{self._name}:{line}: model {model} is deprecated ({why})")
        elif model not in KNOWN_MODELS:
            msg = f"model {model!r} is not one batchgen knows; sent as is"
            out.append(f"{self._name}:{line}: {msg}")

    def _prompt_only(self, line: int, prompt: str, state: _State) -> list[JobSpec | Problem | str]:
        """A row that is a prompt and nothing else: one job with every default.

        Most rows of a dataset manifest look like this, so it skips the general path's field
        look-ups; the job and its id are exactly what :meth:`_build_plain` would make.
        """
        model = self._fallback_model
        out: list[JobSpec | Problem | str] = []
        if model not in state.models_seen:
            self._first_use(out, model, line, state)
        head, tail = self._default_payload
        digest = sha256(b"".join((head, orjson.dumps(prompt), tail))).hexdigest()[:10]
        job_id = f"{mf.prompt_slug(prompt)}-{digest}"
        job_ids = state.job_ids
        if job_ids is not None:
            other = job_ids.setdefault(job_id, line)
            if other != line:
                out.append(_duplicate(self._name, line, other, job_id))
                return out
        job = _new_job(
            job_id, prompt, model, (), None, DEFAULT_IMAGE_SIZE, False, None, None, 0, None,
            self._name, line, (),
        )  # fmt: skip
        if out:
            out.append(job)
            return out
        return [job]

    def _check_budget(self, row: mf.Row, refs: list[Reference], state: _State) -> str | None:
        """A warning if the references must shrink to fit one request; a problem if they can't."""
        budget = reference_budget(refs, self._max_request_bytes)
        if budget is None:
            return None
        big = [r for r in refs if r.size_bytes > budget]
        for ref in big:
            if not self._resolver.decodable(ref):
                msg = (
                    f"{ref.source} ({ref.size_bytes / 2**20:.1f} MiB) makes the request too large "
                    "and cannot be shrunk (Pillow cannot decode it); convert it to JPEG"
                )
                state.problems.append(Problem(self._name, row.line_of("images"), "images", msg))
        return (
            f"{self._name}:{row.line}: references total ~{request_bytes(refs) / 2**20:.1f} MiB "
            f"encoded, over the {self._max_request_bytes / 2**20:.0f} MiB request limit; "
            f"{len(big)} will be re-encoded as JPEG to fit"
        )

    def _build_plain(
        self,
        row: mf.Row,
        values: dict[str, Any],
        prompt: str,
        model: str,
        references: tuple[Reference, ...],
        state: _State,
    ) -> Iterator[JobSpec | Problem]:
        """A row without vars: the literal prompt, ``count`` samples (most rows of a dataset).

        The same jobs and ids as :meth:`_build_matrix` would make, without its per-job
        ``itertools.product`` / ``format_map`` machinery.
        """
        user_id: str | None = values.get("id")
        count: int = values.get("count", 1)
        aspect_ratio: str | None = values.get("aspect_ratio")
        image_size: str = values.get("image_size", DEFAULT_IMAGE_SIZE)
        output_text: bool = values.get("output_text", False)
        temperature: float | None = values.get("temperature")
        seed: int | None = values.get("seed")
        identities = [r.sha256 or r.source for r in references] if references else []
        prefix = mf.job_prefix(mf.sanitise_id(user_id) if user_id is not None else "", (), prompt)
        job_ids = state.job_ids
        line = row.line
        source = self._name
        for sample in range(count):
            digest = _job_digest(
                model, prompt, identities, aspect_ratio, image_size, output_text, temperature,
                seed, sample, user_id,
            )  # fmt: skip
            # Sample 0 keeps the bare prefix whatever the count, so raising `count: 1` to
            # `count: 2` keeps the id (and the image) of the job already made.
            job_id = f"{prefix}-{sample}-{digest}" if sample else f"{prefix}-{digest}"
            if job_ids is not None:
                other = job_ids.setdefault(job_id, line)
                if other != line:
                    yield _duplicate(source, line, other, job_id)
                    return
            yield _new_job(
                job_id, prompt, model, references, aspect_ratio, image_size, output_text,
                temperature, seed, sample, user_id, source, line, (),
            )  # fmt: skip

    def _build_matrix(
        self,
        row: mf.Row,
        values: dict[str, Any],
        template: str,
        model: str,
        references: tuple[Reference, ...],
        matrix: tuple[tuple[str, tuple[str, ...]], ...],
        state: _State,
    ) -> Iterator[JobSpec | Problem]:
        user_id: str | None = values.get("id")
        count: int = values.get("count", 1)
        aspect_ratio: str | None = values.get("aspect_ratio")
        image_size: str = values.get("image_size", DEFAULT_IMAGE_SIZE)
        output_text: bool = values.get("output_text", False)
        temperature: float | None = values.get("temperature")
        seed: int | None = values.get("seed")
        identities = [r.sha256 or r.source for r in references]
        id_prefix = mf.sanitise_id(user_id) if user_id is not None else ""
        names = [n for n, _ in matrix]
        for combo in itertools.product(*(v for _, v in matrix)):
            pairs = tuple(zip(names, combo, strict=True))
            prompt = template.format_map(dict(pairs))
            prefix = mf.job_prefix(id_prefix, combo, prompt)
            for sample in range(count):
                digest = _job_digest(
                    model, prompt, identities, aspect_ratio, image_size, output_text,
                    temperature, seed, sample, user_id,
                )  # fmt: skip
                job_id = f"{prefix}-{sample}-{digest}" if sample else f"{prefix}-{digest}"
                if state.job_ids is not None:
                    other = state.job_ids.setdefault(job_id, row.line)
                    if other != row.line:
                        yield _duplicate(self._name, row.line, other, job_id)
                        return
                yield JobSpec(
                    job_id=job_id,
                    prompt=prompt,
                    model=model,
                    references=references,
                    aspect_ratio=aspect_ratio,
                    image_size=image_size,
                    output_text=output_text,
                    temperature=temperature,
                    seed=seed,
                    sample=sample,
                    user_id=user_id,
                    source_file=self._name,
                    source_line=row.line,
                    vars=pairs,
                )

    def _load_yaml(self) -> tuple[my.YamlMap | None, dict[str, str | None]]:
        top: dict[str, str | None] = {"model": None, "provider": None, "base_url": None}
        try:
            doc = my.load_yaml(self.path.read_bytes())
        except my.YamlSyntaxError as exc:
            self._setup.append(Problem(self._name, exc.line, "", f"YAML syntax error: {exc}"))
            return None, top
        except OSError as exc:
            raise InputError([Problem(self._name, 0, "", f"cannot read: {exc}")]) from exc
        if not isinstance(doc, my.YamlMap):
            msg = "the file must be a mapping with a `jobs:` list"
            self._setup.append(Problem(self._name, 1, "", msg))
            return None, top
        self._setup.extend(my.check_top(doc, self._name, top))
        return doc, top


def _job_payload(
    model: str,
    prompt: str,
    references: list[str],
    aspect_ratio: str | None,
    image_size: str,
    output_text: bool,
    temperature: float | None,
    seed: int | None,
    sample: int,
    user_id: str | None,
) -> dict[str, Any]:
    """What a job id hashes: the job's settings, in sorted key order.

    Sorted as written, so ``orjson.dumps`` of it is byte for byte what
    ``orjson.dumps(..., option=OPT_SORT_KEYS)`` gives (and always gave), without sorting per job.
    """
    return {
        "aspect_ratio": aspect_ratio,
        "image_size": image_size,
        "model": model,
        "output_text": output_text,
        "prompt": prompt,
        "references": references,
        "sample": sample,
        "seed": seed,
        "temperature": temperature,
        "user_id": user_id,
    }


def _job_digest(
    model: str,
    prompt: str,
    references: list[str],
    aspect_ratio: str | None,
    image_size: str,
    output_text: bool,
    temperature: float | None,
    seed: int | None,
    sample: int,
    user_id: str | None,
) -> str:
    """The hash part of a job id: the first 10 hex digits of the sha256 of its settings' JSON."""
    payload = _job_payload(
        model, prompt, references, aspect_ratio, image_size, output_text, temperature, seed,
        sample, user_id,
    )  # fmt: skip
    return sha256(orjson.dumps(payload)).hexdigest()[:10]


def _duplicate(name: str, line: int, other: int, job_id: str) -> Problem:
    return Problem(
        name,
        line,
        "",
        f"duplicate job: same prompt and settings as line {other} "
        f"(job id {job_id}); use count for more images of one prompt",
    )


_JOB_FIELDS = (
    "job_id", "prompt", "model", "references", "aspect_ratio", "image_size", "output_text",
    "temperature", "seed", "sample", "user_id", "source_file", "source_line", "vars",
)  # fmt: skip


def _job_constructor() -> Callable[..., JobSpec]:
    """``JobSpec(...)`` with all fields positional, at half the cost.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; at a
    million jobs that is a second of planning. This fills the slots directly instead, which gives
    the same object (still frozen afterwards). Only while ``JobSpec`` stays a plain frozen slots
    dataclass with exactly these fields and no ``__post_init__``; otherwise the class itself.
    """
    fields = dataclasses.fields(JobSpec)
    plain = (
        tuple(f.name for f in fields) == _JOB_FIELDS
        and all(f.init for f in fields)
        and "__slots__" in JobSpec.__dict__
        and not hasattr(JobSpec, "__post_init__")
    )
    if not plain:
        return JobSpec
    s = tuple(getattr(JobSpec, name).__set__ for name in _JOB_FIELDS)
    new = object.__new__

    def make(
        job_id: str,
        prompt: str,
        model: str,
        references: tuple[Reference, ...],
        aspect_ratio: str | None,
        image_size: str,
        output_text: bool,
        temperature: float | None,
        seed: int | None,
        sample: int,
        user_id: str | None,
        source_file: str,
        source_line: int,
        vars: tuple[tuple[str, str], ...],
    ) -> JobSpec:
        job: JobSpec = new(JobSpec)
        s[0](job, job_id)
        s[1](job, prompt)
        s[2](job, model)
        s[3](job, references)
        s[4](job, aspect_ratio)
        s[5](job, image_size)
        s[6](job, output_text)
        s[7](job, temperature)
        s[8](job, seed)
        s[9](job, sample)
        s[10](job, user_id)
        s[11](job, source_file)
        s[12](job, source_line)
        s[13](job, vars)
        return job

    return make


_new_job = _job_constructor()


class _State:
    """Per-pass bookkeeping: the duplicate-detection sets are the only state that grows."""

    __slots__ = ("job_ids", "models_seen", "problems", "user_ids")

    def __init__(self, check_duplicates: bool) -> None:
        self.job_ids: dict[str, int] | None = {} if check_duplicates else None
        self.user_ids: dict[str, int] | None = {} if check_duplicates else None
        self.models_seen: set[str] = set()
        self.problems: list[Problem] = []
