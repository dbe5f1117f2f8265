"""The folder's batches for ``batchgen status``: read from the journal alone, with nothing of
the pipeline imported (``status`` stays quick and needs no key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..folder.layout import JOURNAL_NAME


def batch_rows(run_dir: Path) -> list[dict[str, Any]]:
    if not (run_dir / JOURNAL_NAME).exists():
        return []  # a live-mode folder: the journal's imports (the plan, the store) not loaded
    from ..folder.batches import Journal

    return [r.to_json() for r in Journal(run_dir).all_records()]


def age(iso: str) -> str:
    from ..folder.batches import seconds_since

    s = seconds_since(iso)
    if s == float("inf"):
        return "?"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def format_batches(rows: list[dict[str, Any]]) -> str:
    lines = ["batches:"]
    for r in rows:
        state = str(r["state"]).removeprefix("BATCH_STATE_").lower()
        lines.append(
            f"  {r['name'] or '(not created)':<44} {state:<10} {r['jobs']:>6} jobs "
            f"{r['succeeded']:>6} ok {r['failed']:>5} failed  {age(str(r['created_at']))} old"
        )
        if r.get("note"):
            lines.append(f"    {r['note']}")
    return "\n".join(lines)
