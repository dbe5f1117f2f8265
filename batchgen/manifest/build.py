"""Job ids and :class:`~batchgen.spec.JobSpec` construction for :mod:`batchgen.manifest`.

A job id hashes the settings that are sent; the helpers here are called once per job of a
million-row manifest, so they avoid per-job sorting and dataclass overhead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from hashlib import sha256
from typing import Any

import orjson

from batchgen.errors import Problem
from batchgen.spec import Chain, JobSpec, MetaValue, Reference, RequestExtras


def job_payload(
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
    extras: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a job id hashes: the job's settings, in sorted key order.

    Sorted as written, so ``orjson.dumps`` of it is byte for byte what
    ``orjson.dumps(..., option=OPT_SORT_KEYS)`` gives (and always gave), without sorting per job.
    ``extras`` (the optional request fields that are set, :func:`.extras.hashed`) join only
    when there are any, sorted in: a job that sets none keeps the id it always had.
    """
    payload = {
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
    if extras:
        payload = dict(sorted({**payload, **extras}.items()))
    return payload


def job_digest(
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
    extras: dict[str, Any] | None = None,
) -> tuple[str, int]:
    """The hash part of a job id (the first 10 hex digits of the sha256 of its settings' JSON),
    and its :func:`request_key`."""
    payload = job_payload(
        model, prompt, references, aspect_ratio, image_size, output_text, temperature, seed,
        sample, user_id, extras,
    )  # fmt: skip
    digest = sha256(orjson.dumps(payload)).digest()
    # digest[:5].hex() and the first 8 bytes as an int: hexdigest()[:10] and request_key's
    # value, without the 64-character string.
    return digest[:5].hex(), int.from_bytes(digest[:8], "big")


def request_key(hexdigest: str) -> int:
    """What the duplicate check keeps per job: 64 bits of the sha256 of what is sent, the sample
    index and the user's ``id``; not the id's readable prefix, which differs between the row
    ``a cat`` and the matrix row ``a {x}``, x: [cat], though both send the same request. Rows
    with different ``id`` values are different jobs by intent (the id names their files).

    A fixed ~100 bytes a job in a dict, whatever the prompt's length. At a million jobs the
    chance that two different requests share a key is ~3e-8."""
    return int(hexdigest[:16], 16)


def duplicate(name: str, line: int, other: int, job_id: str, prompt: str) -> Problem:
    shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    where = "earlier on this row" if other == line else f"line {other}"
    return Problem(
        name,
        line,
        "",
        f"duplicate job: sends the same request as {where} (prompt {shown!r}, same settings "
        f"and references; job id {job_id}); one request, one job: drop one, or use count for "
        "more images of one prompt",
    )


_JOB_FIELDS = (
    "job_id", "prompt", "model", "references", "aspect_ratio", "image_size", "output_text",
    "temperature", "seed", "sample", "user_id", "source_file", "source_line", "vars", "meta",
    "extras", "chain",
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
        meta: tuple[tuple[str, MetaValue], ...],
        extras: RequestExtras | None = None,
        chain: Chain | None = None,
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
        s[14](job, meta)
        s[15](job, extras)
        s[16](job, chain)
        return job

    return make


new_job = _job_constructor()


class State:
    """Per-pass bookkeeping: the duplicate-detection sets are the only state that grows."""

    __slots__ = ("models_seen", "problems", "requests", "user_ids")

    def __init__(self, check_duplicates: bool) -> None:
        # request_key -> the line that first sent it. Keyed by the request, not the job id: the
        # row `a cat` and the matrix row `a {x}` with x: [cat] get two ids for one request.
        self.requests: dict[int, int] | None = {} if check_duplicates else None
        self.user_ids: dict[str, int] | None = {} if check_duplicates else None
        self.models_seen: set[str] = set()
        self.problems: list[Problem] = []
