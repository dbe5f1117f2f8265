"""A chained job made ready to send (issue 22): its parents' images and conversation, read from
their sidecars in the run folder.

The sidecar is the durable parent: its image's place and sha256, and the answer's parts with
their thoughtSignatures (``turn``). So a child can be made in a later run, after a crash, in
batch mode: nothing of a parent is needed but its files. A parent's user turn is rebuilt from
its spec (the manifest holds every ancestor), its model turn from its sidecar.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import orjson

from ..folder.layout import IMAGES_DIR, subdir
from ..folder.ledger import LedgerRecord
from ..spec import JobSpec, Reference, Turn, TurnPart

log = logging.getLogger(__name__)


def sidecar_path(run_dir: Path, job_id: str) -> Path:
    return run_dir / IMAGES_DIR / subdir(job_id) / f"{job_id}.json"


def read_sidecar(run_dir: Path, job_id: str) -> LedgerRecord | None:
    """The job's saved record if it succeeded and its image is there; else None."""
    try:
        rec = LedgerRecord.from_dict(orjson.loads(sidecar_path(run_dir, job_id).read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable sidecar: %s", job_id, exc)
        return None
    if not rec.succeeded or not rec.outputs or not (run_dir / rec.outputs[0]).is_file():
        return None
    return rec


class Lineage:
    """Parents' current images in one run folder; a child's request made from them."""

    def __init__(self, run_dir: Path, specs: dict[str, JobSpec]) -> None:
        self.run_dir = run_dir
        self.specs = specs  # every chained job of the manifest, by job id
        self._records: dict[str, LedgerRecord | None] = {}

    def forget(self, job_id: str) -> None:
        """A job just (re)made: its sidecar is read again when next asked for."""
        self._records.pop(job_id, None)

    def clear(self) -> None:
        self._records.clear()

    def record(self, job_id: str) -> LedgerRecord | None:
        if job_id not in self._records:
            self._records[job_id] = read_sidecar(self.run_dir, job_id)
        return self._records[job_id]

    def image_of(self, job_id: str) -> Reference | None:
        rec = self.record(job_id)
        if rec is None or rec.sha256 is None:
            return None
        path = self.run_dir / rec.outputs[0]
        try:
            size = path.stat().st_size
        except OSError:
            return None
        return Reference(source=f"@{rec.name or job_id}", path=path, sha256=rec.sha256,
                         mime_type=rec.mime_type or "", size_bytes=size, parent=job_id)

    def ready(self, spec: JobSpec) -> JobSpec | None:
        """``spec`` with its parents' images as references and its conversation's earlier
        turns; None if a parent has no image (yet)."""
        chain = spec.chain
        if chain is None or not chain.parents:
            return spec
        made_from: list[tuple[str, str]] = []
        for parent in chain.parents:
            rec = self.record(parent)
            if rec is None or rec.sha256 is None:
                return None
            made_from.append((parent, rec.sha256))
        refs = self._references(spec)
        if refs is None:
            return None
        history: tuple[Turn, ...] = ()
        if chain.edit_of is not None:
            found = self._history(chain.edit_of)
            if found is None:
                return None
            history = found
        return dataclasses.replace(spec, references=refs, chain=dataclasses.replace(
            chain, history=history, made_from=tuple(made_from)))

    def _references(self, spec: JobSpec) -> tuple[Reference, ...] | None:
        out: list[Reference] = []
        for ref in spec.references:
            if ref.parent:
                image = self.image_of(ref.parent)
                if image is None:
                    return None
                ref = dataclasses.replace(image, source=ref.source)
            out.append(ref)
        return tuple(out)

    def _history(self, job_id: str) -> tuple[Turn, ...] | None:
        """The turns up to and including ``job_id``'s answer: its own history, its user turn
        (prompt and references), its model turn (the answer's parts as received)."""
        spec = self.specs.get(job_id)
        rec = self.record(job_id)
        if spec is None or rec is None:
            return None
        earlier: tuple[Turn, ...] = ()
        chain = spec.chain
        if chain is not None and chain.edit_of is not None:
            found = self._history(chain.edit_of)
            if found is None:
                return None
            earlier = found
        refs = self._references(spec)
        image = self.image_of(job_id)
        if refs is None or image is None:
            return None
        user = Turn("user", (TurnPart(text=spec.prompt), *(TurnPart(image=r) for r in refs)))
        parts: list[TurnPart] = []
        for part in rec.turn or ({"image": True},):
            sig = part.get("thoughtSignature")
            signature = sig if isinstance(sig, str) else None
            thought = bool(part.get("thought"))
            if part.get("image"):
                parts.append(TurnPart(image=image, signature=signature, thought=thought))
            elif isinstance(part.get("text"), str):
                parts.append(TurnPart(text=part["text"], signature=signature, thought=thought))
        return (*earlier, user, Turn("model", tuple(parts)))
