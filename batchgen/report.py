"""Reading a run folder back: ``batchgen status`` (and the figures ``report`` builds on).

Reads ``DIR/run.json`` and ``DIR/ledger.jsonl`` alone: no manifest, no key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .ledger import LEDGER_NAME, LedgerRecord, iter_ledger
from .plan import RunFolder


@dataclass(slots=True)
class Status:
    run_dir: Path
    jobs: int
    succeeded: int
    failed: int
    cost_usd: float
    errors: dict[str, int] = field(default_factory=dict)
    state: str = ""

    @property
    def pending(self) -> int:
        return max(self.jobs - self.succeeded - self.failed, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "pending": self.pending,
            "cost_usd": round(self.cost_usd, 4),
            "errors": dict(sorted(self.errors.items())),
        }


def latest_records(run_dir: Path) -> tuple[dict[str, LedgerRecord], float]:
    """The last record per job and the total spend over every line."""
    latest: dict[str, LedgerRecord] = {}
    cost = 0.0
    for rec in iter_ledger(run_dir / LEDGER_NAME):
        latest[rec.job_id] = rec
        cost += rec.cost_usd
    return latest, cost


def load_status(run_dir: Path) -> Status:
    folder = RunFolder(run_dir)
    meta = folder.read_meta()
    if not meta and not folder.ledger_path.exists():
        raise InputError(f"{run_dir}: not a batchgen run folder (no run.json or ledger.jsonl)")
    latest, cost = latest_records(run_dir)
    succeeded = sum(1 for r in latest.values() if r.succeeded)
    errors: dict[str, int] = {}
    for r in latest.values():
        if not r.succeeded and r.error is not None:
            errors[r.error.kind] = errors.get(r.error.kind, 0) + 1
    failed = len(latest) - succeeded
    jobs = max(int(meta.get("jobs") or 0), len(latest))
    return Status(run_dir, jobs, succeeded, failed, cost, errors, str(meta.get("state", "")))


def format_status(st: Status) -> str:
    lines = [
        f"{st.run_dir}: {st.jobs} jobs" + (f" (last run: {st.state})" if st.state else ""),
        f"  succeeded  {st.succeeded}",
        f"  failed     {st.failed}",
    ]
    for kind, n in sorted(st.errors.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {kind:<16} {n}")
    lines += [f"  pending    {st.pending}", f"  spent      ${st.cost_usd:.2f}"]
    return "\n".join(lines)
