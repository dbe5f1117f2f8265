"""The short path of :class:`~batchgen.manifest.jobs.Expander`: a row of plain fields (or a
prompt alone) made into its one job without the general path's per-field dispatch.

Most rows of a dataset manifest look like this; the job and its id are exactly what the general
path makes, and any row the short path is unsure of goes the general way, which finds and names
its problems.
"""

from __future__ import annotations

from hashlib import sha256

import orjson

from batchgen.catalog import ModelTable
from batchgen.errors import Problem
from batchgen.manifest import extras as mx
from batchgen.manifest import fields as mf
from batchgen.manifest import ids
from batchgen.manifest.base import Bad
from batchgen.manifest.build import State, duplicate, job_digest, new_job, request_key
from batchgen.spec import DEFAULT_IMAGE_SIZE, MAX_ID_LENGTH, JobSpec, safe_id

# The fields of a row the short path (ShortPaths._simple) takes; any other goes the general way.
SIMPLE_FIELDS = frozenset({"id", "prompt", "aspect_ratio", "image_size", "model", "seed",
                           "temperature", "output_text", "meta"})
# Parsed cells and model checks kept per manifest, for fields of few values.
_CACHE_MAX = 4096


class ShortPaths:
    """What the short path needs of its :class:`~batchgen.manifest.jobs.Expander`."""

    _name: str
    _models: ModelTable
    _fallback_model: str
    cli_model: str | None
    _parsed: dict[tuple[object, object, object, bool], tuple[str | None, str, str, bool] | None]
    _default_payload: tuple[bytes, bytes]

    def _first_use(
        self,
        out: list[JobSpec | Problem | str],
        model: str,
        line: int,
        state: State,
        *,
        own: bool = False,
    ) -> None:
        """The warning, if any, for the first job that uses ``model``.

        A model the row does not set came from ``--model`` (when given): the warning names the
        flag, not the manifest line where it happened to be used first.
        """
        state.models_seen.add(model)
        where = f"{self._name}:{line}: model"
        if not own and self.cli_model is not None and model == self.cli_model:
            where = "--model"
        info = self._models.get(model)
        if info is not None and info.deprecated:
            out.append(f"{where} {model} is deprecated ({info.deprecated})")

    def _prompt_only(self, line: int, prompt: str, state: State) -> list[JobSpec | Problem | str]:
        """A row that is a prompt and nothing else: one job with every default.

        Most rows of a dataset manifest look like this, so it skips the general path's field
        look-ups; the job and its id are exactly what :meth:`_build_plain` would make.
        """
        model = self._fallback_model
        out: list[JobSpec | Problem | str] = []
        if model not in state.models_seen:
            self._first_use(out, model, line, state)
        head, tail = self._default_payload
        full = sha256(b"".join((head, orjson.dumps(prompt), tail))).hexdigest()
        job_id = f"{ids.prompt_slug(prompt)}-{full[:10]}"
        requests = state.requests
        if requests is not None:
            key = request_key(full)
            other = requests.get(key)
            if other is not None:
                out.append(duplicate(self._name, line, other, job_id, prompt))
                return out
            requests[key] = line
        job = new_job(
            job_id, prompt, model, (), None, DEFAULT_IMAGE_SIZE, False, None, None, 0, None,
            self._name, line, (), (),
        )  # fmt: skip
        if out:
            out.append(job)
            return out
        return [job]

    def _simple(self, row: mf.Row, state: State) -> list[JobSpec | Problem | str] | None:
        """A CSV or JSONL row of plain fields (no references, vars, count or request extras):
        its one job, or None for anything the general path must look at (a bad value, a model
        that lacks a setting, braces in meta, a repeated id), which then finds the problems.

        Most rows of a dataset manifest look like this; the job and its id are exactly what the
        general path makes (parse_row, then _build_plain), without its per-field dispatch.
        """
        fields, text = row.fields, row.text
        get = fields.get
        prompt = get("prompt")
        if type(prompt) is not str:
            return None
        prompt = prompt.strip()
        if not prompt or len(prompt) > mf.MAX_PROMPT_CHARS or mf.CONTROL_CHARS.search(prompt):
            return None
        user_id = get("id")
        if user_id is None:
            prefix = ids.prompt_slug(prompt)
        elif type(user_id) is str:
            user_id = user_id.strip()
            try:
                # ids.job_prefix of an id and no vars: the id's safe form
                prefix = safe_id(user_id)[:MAX_ID_LENGTH].rstrip("-.")
            except ValueError:
                return None
        else:
            return None
        try:
            settings = self._settings(get("aspect_ratio"), get("image_size"), get("model"), text)
        except TypeError:
            return None  # an unhashable value (a JSON list): the general path says why
        if settings is None:
            return None
        ratio, size, model, own_model = settings
        seed = temperature = None
        output_text = False
        try:
            raw = get("seed")
            if raw is not None:
                seed = mf.parse_seed(raw, text)
            raw = get("temperature")
            if raw is not None:
                temperature = mf.parse_temperature(raw, text)
            raw = get("output_text")
            if raw is not None:
                output_text = mf.parse_output_text(raw, text)
            raw = get("meta")
            meta = () if raw is None else mf.parse_meta(raw, text)
        except Bad:
            return None
        for _, value in meta:
            if type(value) is str and ("{" in value or "}" in value):
                return None  # a placeholder in a row without vars is a problem
        line = row.line
        user_ids = state.user_ids
        if (user_id is not None and user_ids is not None
                and user_ids.setdefault(user_id, line) != line):
            return None  # a repeated id
        out: list[JobSpec | Problem | str] = []
        if model not in state.models_seen:
            self._first_use(out, model, line, state, own=own_model)
        digest, key = job_digest(model, prompt, [], ratio, size, output_text, temperature, seed,
                                 0, user_id)
        job_id = f"{prefix}-{digest}"
        requests = state.requests
        if requests is not None:
            other = requests.get(key)
            if other is not None:
                out.append(duplicate(self._name, line, other, job_id, prompt))
                return out
            requests[key] = line
        out.append(new_job(
            job_id, prompt, model, (), ratio, size, output_text, temperature, seed, 0, user_id,
            self._name, line, (), meta,
        ))  # fmt: skip
        return out

    def _settings(self, ratio: object, size: object, model: object, text: bool
                  ) -> tuple[str | None, str, str, bool] | None:
        """(aspect ratio, image size, model, whether the row named the model) from a row's
        cells, or None when one is bad or the model does not offer them. Cached: a manifest
        has few such combinations (TypeError for an unhashable cell)."""
        key = (ratio, size, model, text)
        parsed = self._parsed
        if key in parsed:
            return parsed[key]
        try:
            got_ratio = None if ratio is None else mf.parse_aspect_ratio(ratio, text)
            got_size = DEFAULT_IMAGE_SIZE if size is None else mf.parse_image_size(size, text)
            got_model = self._fallback_model if model is None else mf.parse_model(model, text)
        except Bad:
            result = None
        else:
            info = self._models.get(got_model)
            values = {"aspect_ratio": got_ratio, "image_size": None if size is None else got_size}
            ok = info is not None and not mx.model_problems(info, values, 0)
            result = (got_ratio, got_size, got_model, model is not None) if ok else None
        if len(self._parsed) < _CACHE_MAX:
            self._parsed[key] = result
        return result
