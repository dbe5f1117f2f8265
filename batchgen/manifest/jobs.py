"""The plan of jobs: one checked manifest row expanded into its jobs (count x matrix).

Each row's fields are parsed by :mod:`batchgen.manifest.fields`; what comes out is, per row,
its problems, or its :class:`~batchgen.spec.JobSpec` stream and warnings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from batchgen.catalog import ModelTable
from batchgen.errors import Problem
from batchgen.manifest import chains, ids
from batchgen.manifest import extras as mx
from batchgen.manifest import fields as mf
from batchgen.manifest.base import Bad
from batchgen.manifest.build import State, duplicate, job_digest, job_payload, new_job
from batchgen.manifest.references import (
    ReferenceProblem,
    ReferenceResolver,
    reference_budget,
    request_bytes,
)
from batchgen.manifest.short_path import SIMPLE_FIELDS, ShortPaths
from batchgen.spec import (
    DEFAULT_IMAGE_SIZE,
    JobSpec,
    MetaValue,
    Reference,
    RequestExtras,
)

# A row's jobs are built into a list up to this many; a bigger row (count, vars) streams.
_EAGER_JOBS = 256


class Expander(ShortPaths):
    """Rows of one manifest -> jobs. Holds what every row shares: file name, format, defaults."""

    def __init__(
        self,
        name: str,
        fmt: str,
        resolver: ReferenceResolver,
        max_request_bytes: int,
        fallback_model: str,
        models: ModelTable,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self._name = name
        self._models = models
        # `--set FIELD=VALUE`, parsed: what a row that does not set the field gets.
        self._defaults = defaults or {}
        self._fmt = fmt
        self._resolver = resolver
        self._max_request_bytes = max_request_bytes
        self._fallback_model = fallback_model
        self.cli_model: str | None = None  # set by Manifest when --model was given
        self._parsed: dict[tuple[object, object, object, bool],
                           tuple[str | None, str, str, bool] | None] = {}
        # The hashed settings of a job with every default, split around its prompt: the JSON
        # :func:`job_digest` hashes is ``head + orjson.dumps(prompt) + tail``.
        marker = "prompt goes here"
        payload = job_payload(fallback_model, marker, [], None, DEFAULT_IMAGE_SIZE, False,
                              None, None, 0, None)  # fmt: skip
        head, _, tail = orjson.dumps(payload).partition(orjson.dumps(marker))
        self._default_payload = (head, tail)

    def expand(self, row: mf.Row, state: State) -> Iterable[JobSpec | Problem | str]:
        """One row or YAML job -> its problems, or its jobs (count x matrix) and warnings."""
        fields = row.fields
        if not self._defaults and self._fmt != "yaml":
            if len(fields) == 1:
                # A prompt and nothing else: parse_row would give {"prompt": raw.strip()}.
                raw = fields.get("prompt")
                if type(raw) is str:
                    stripped = raw.strip()
                    if (stripped and len(stripped) <= mf.MAX_PROMPT_CHARS
                            and not mf.CONTROL_CHARS.search(stripped)):
                        return self._prompt_only(row.line, stripped, state)
            simple = self._simple(row, state) if fields.keys() <= SIMPLE_FIELDS else None
            if simple is not None:
                return simple
        name = self._name
        problems = state.problems
        values = mf.parse_row(row, self._fmt, name, problems)
        for key, default in self._defaults.items():
            if key == "meta" and "meta" in values:
                values["meta"] = (*((k, v) for k, v in default if k not in dict(values["meta"])),
                                  *values["meta"])  # fmt: skip
            else:
                values.setdefault(key, default)
        prompt: str | None = values.get("prompt")
        images: tuple[str, ...] = values.get("images", ())
        references: list[Reference] = []
        matrix: tuple[tuple[str, tuple[str, ...]], ...] = values.get("vars", ())
        var_names = [n for n, _ in matrix]
        for source in images:
            if source.startswith("@"):  # another job's image (issue 22): resolved with chains
                why = chains.template_problem(source[1:], var_names)
                if why is not None:
                    problems.append(Problem(name, row.line_of("images"), "images", why))
                references.append(Reference(source=source))
                continue
            try:
                references.append(self._resolver.resolve(source))
            except ReferenceProblem as exc:
                problems.append(Problem(name, row.line_of("images"), "images", str(exc)))
        for key in ("edit_of", "id"):
            text = values.get(key)
            if text is not None and (key == "edit_of" or ("{" in text and matrix)):
                why = chains.template_problem(text, var_names)
                if why is not None:
                    problems.append(Problem(name, row.line_of(key), key, why))
        if matrix and prompt is not None:
            for message in ids.check_template(prompt, [n for n, _ in matrix]):
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
        info = self._models.get(model)
        if info is None and "model" in values:
            unknown = self._models.unknown(model)
            problems.append(Problem(name, row.line_of("model"), "model", unknown))
        elif info is not None:
            for field, message in mx.model_problems(info, values, len(images)):
                problems.append(Problem(name, row.line_of(field), field, message))
        meta: tuple[tuple[str, MetaValue], ...] = values.get("meta", ())
        templates: dict[str, str] = {}
        if meta:
            templates, bad_meta = mx.meta_templates(meta, [n for n, _ in matrix])
            key_lines: dict[str, int] = getattr(fields.get("meta"), "key_lines", {})
            for bad in bad_meta:
                line = key_lines.get(bad.key, row.line_of("meta"))
                problems.append(Problem(name, line, f"meta.{bad.key}", str(bad)))
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
            self._first_use(out, model, row.line, state, own="model" in values)
        refs = tuple(references)
        if matrix:
            jobs = self._build_matrix(row, values, prompt, model, refs, matrix, templates, state)
        else:
            jobs = self._build_plain(row, values, prompt, model, refs, state)
        if n_jobs <= _EAGER_JOBS:
            out.extend(jobs)
            return out
        return itertools.chain(out, jobs)  # a row of many jobs streams: memory stays flat

    def _check_budget(self, row: mf.Row, refs: list[Reference], state: State) -> str | None:
        """A warning if the references must shrink to fit one request; a problem if they can't."""
        budget = reference_budget(refs, self._max_request_bytes)
        if budget is None:
            return None
        big = [r for r in refs if r.size_bytes > budget]
        for ref in big:
            why = self._resolver.decode_problem(ref)
            if why is not None:
                msg = (
                    f"{ref.source} ({ref.size_bytes / 2**20:.1f} MiB) makes the request too large "
                    f"and cannot be shrunk ({why}); convert it to a smaller JPEG"
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
        state: State,
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
        meta: tuple[tuple[str, MetaValue], ...] = values.get("meta", ())  # not hashed
        extras = mx.extras_of(values)
        edit_of: str | None = values.get("edit_of")
        hashed = chains.hashed(mx.hashed(extras), edit_of)
        chain = chains.marker(edit_of, references)
        identities = [r.sha256 or r.source for r in references] if references else []
        prefix = ids.job_prefix(mf.sanitise_id(user_id) if user_id is not None else "", (), prompt)
        requests = state.requests
        line = row.line
        source = self._name
        for sample in range(count):
            digest, key = job_digest(
                model, prompt, identities, aspect_ratio, image_size, output_text, temperature,
                seed, sample, user_id, hashed,
            )  # fmt: skip
            # Sample 0 keeps the bare prefix whatever the count, so raising `count: 1` to
            # `count: 2` keeps the id (and the image) of the job already made.
            job_id = f"{prefix}-{sample}-{digest}" if sample else f"{prefix}-{digest}"
            if requests is not None:
                other = requests.get(key)
                if other is not None:
                    yield duplicate(source, line, other, job_id, prompt)
                    return
                requests[key] = line
            yield new_job(
                job_id, prompt, model, references, aspect_ratio, image_size, output_text,
                temperature, seed, sample, user_id, source, line, (), meta, extras, chain,
            )  # fmt: skip

    def _build_matrix(
        self,
        row: mf.Row,
        values: dict[str, Any],
        template: str,
        model: str,
        references: tuple[Reference, ...],
        matrix: tuple[tuple[str, tuple[str, ...]], ...],
        templates: dict[str, str],
        state: State,
    ) -> Iterator[JobSpec | Problem]:
        user_id: str | None = values.get("id")
        count: int = values.get("count", 1)
        aspect_ratio: str | None = values.get("aspect_ratio")
        image_size: str = values.get("image_size", DEFAULT_IMAGE_SIZE)
        output_text: bool = values.get("output_text", False)
        temperature: float | None = values.get("temperature")
        seed: int | None = values.get("seed")
        meta: tuple[tuple[str, MetaValue], ...] = values.get("meta", ())  # not hashed
        extras: RequestExtras | None = mx.extras_of(values)
        row_id = user_id
        edit_template: str | None = values.get("edit_of")
        # `id: "{character}-sheet"`: each combination's own id, for `@{character}-sheet`.
        id_template = row_id is not None and "{" in row_id
        row_refs = references
        chained = edit_template is not None or any(r.source.startswith("@") for r in references)
        id_prefix = mf.sanitise_id(user_id) if user_id is not None and not id_template else ""
        names = [n for n, _ in matrix]
        in_id = chains.placeholders(row_id) if id_template and row_id is not None else set()
        for combo in itertools.product(*(v for _, v in matrix)):
            pairs = tuple(zip(names, combo, strict=True))
            filled = dict(pairs)
            prompt = template.format_map(filled)
            job_meta = mx.fill_meta(meta, templates, filled) if templates else meta
            edit_of = edit_template.format_map(filled) if edit_template is not None else None
            references = chains.fill_refs(row_refs, filled) if chained else row_refs
            chain = chains.marker(edit_of, references) if chained else None
            hashed = chains.hashed(mx.hashed(extras), edit_of)
            identities = [r.sha256 or r.source for r in references]
            if id_template:
                assert row_id is not None
                user_id = row_id.format_map(filled)
                try:
                    rest = tuple(v for n, v in pairs if n not in in_id)
                    prefix = ids.job_prefix(mf.sanitise_id(user_id), rest, prompt)
                except Bad as exc:
                    yield Problem(self._name, row.line_of("id"), "id", f"{user_id!r}: {exc}")
                    return
            else:
                prefix = ids.job_prefix(id_prefix, combo, prompt)
            for sample in range(count):
                digest, key = job_digest(
                    model, prompt, identities, aspect_ratio, image_size, output_text,
                    temperature, seed, sample, user_id, hashed,
                )  # fmt: skip
                job_id = f"{prefix}-{sample}-{digest}" if sample else f"{prefix}-{digest}"
                if state.requests is not None:
                    other = state.requests.get(key)
                    if other is not None:
                        yield duplicate(self._name, row.line, other, job_id, prompt)
                        return
                    state.requests[key] = row.line
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
                    meta=job_meta,
                    extras=extras,
                    chain=chain,
                )
