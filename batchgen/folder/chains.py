"""Chains in a run folder's ledger (issue 22): which children were made from a parent image
that is no longer the parent's current one (superseded: the next run makes them again)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ledger import LEDGER_NAME, LedgerRecord, iter_ledger


@dataclass(frozen=True, slots=True)
class ChainCounts:
    chained: int  # jobs whose last line names parents
    superseded: int  # of them succeeded, from a parent image that is no longer current
    parent_failed: int  # of them failed because a parent failed for good

    def to_json(self) -> dict[str, Any]:
        return {"chained": self.chained, "superseded": self.superseded,
                "parent_failed": self.parent_failed}


def chain_counts(latest: dict[str, LedgerRecord],
                 current: set[str] | None = None) -> ChainCounts | None:
    """From the last record per job, counting the manifest's ``current`` jobs only (when known:
    an edited row's old jobs are superseded, not chained); None when no job hangs on another."""
    chained = superseded = parent_failed = 0
    for rec in latest.values():
        if not rec.parents or (current is not None and rec.job_id not in current):
            continue
        chained += 1
        if rec.succeeded:
            for p in rec.parents:
                parent = latest.get(str(p.get("job_id")))
                if parent is None or not parent.succeeded or parent.sha256 != p.get("sha256"):
                    superseded += 1
                    break
        elif rec.error is not None and rec.error.kind == "parent_failed":
            parent_failed += 1
    if not chained:
        return None
    return ChainCounts(chained, superseded, parent_failed)


def read_chain_counts(run_dir: Path, current: set[str] | None = None) -> ChainCounts | None:
    """:func:`chain_counts` over the ledger, read only when a line names parents."""
    latest: dict[str, LedgerRecord] = {}
    for rec in iter_ledger(run_dir / LEDGER_NAME):
        latest[rec.job_id] = rec
    return chain_counts(latest, current)
