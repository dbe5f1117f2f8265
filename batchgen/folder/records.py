"""What a finished job's ledger line says: one builder for live answers and batch results.

Every line and sidecar carries the job's provenance (who it is to the user, where it was
written) and every setting it was generated with, whichever way it was made; `current.py`
writes the same keys for the jobs the manifest holds now.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import errors as e
from ..spec import DEFAULT_ASPECT_RATIO, JobSpec, nearest_aspect_ratio
from .current import references_of, request_of
from .layout import now_iso
from .ledger import ErrorInfo, JobStatus, LedgerRecord


def job_fields(
    spec: JobSpec,
    *,
    attempts: int,
    usage: dict[str, Any] | None,
    cost_usd: float,
    latency_s: float,
    started_at: str,
    tier: str | None = None,
) -> dict[str, Any]:
    """The fields every ledger line of ``spec`` has, success or failure, live or batch."""
    return {
        "job_id": spec.job_id,
        "name": spec.user_id,
        "source": spec.source,
        "meta": dict(spec.meta),
        "vars": dict(spec.vars),
        "request": request_of(spec),
        "prompt": spec.prompt,
        "attempts": attempts,
        "usage": usage,
        "cost_usd": round(cost_usd, 6),
        "latency_s": round(latency_s, 3),
        "finished_at": now_iso(),
        "started_at": started_at,
        "model": spec.model,
        "image_size": spec.image_size,
        # Left out, the output follows the first reference, else 1:1 (shared/gemini-api.md);
        # a success replaces this with the ratio the image came out in.
        "aspect_ratio": spec.aspect_ratio
        or ("from_reference" if spec.references else DEFAULT_ASPECT_RATIO),
        "references": tuple(references_of(spec)),
        "seed": spec.seed,
        "temperature": spec.temperature,
        "tier": tier,
        **parents_of(spec),
    }


def parents_of(spec: JobSpec) -> dict[str, Any]:
    """A chained job's lineage for its line: ``parents``, each job id and the sha256 of the
    image it was made from (None while the parent has none)."""
    chain = spec.chain
    if chain is None or not chain.parents:
        return {}
    used = dict(chain.made_from)
    return {"parents": tuple({"job_id": p, "sha256": used.get(p)} for p in chain.parents)}


def success_record(
    spec: JobSpec,
    fields: dict[str, Any],
    *,
    output: str,
    data: bytes,
    mime_type: str,
    width: int | None,
    height: int | None,
    text: str | None,
    grounding: Any = None,
    sha256: str | None = None,
) -> LedgerRecord:
    """``sha256``: the image's digest when the caller has it already (hashed off the loop)."""
    if spec.aspect_ratio is None and width and height:
        fields = {**fields, "aspect_ratio": nearest_aspect_ratio(width, height)}  # as made
    return LedgerRecord(
        status=JobStatus.SUCCEEDED,
        outputs=(output,),
        text=text,
        width=width,
        height=height,
        mime_type=mime_type,
        sha256=sha256 or sha256_hex(data),
        grounding=grounding,
        **fields,
    )


def failure_record(
    fields: dict[str, Any], exc: e.APIError, *, retryable: bool, message: str
) -> LedgerRecord:
    return LedgerRecord(
        status=JobStatus.FAILED,
        error=ErrorInfo(exc.kind.value, retryable, exc.http_status, message),
        **fields,
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
