"""The folder's batches for ``batchgen status``: read from the journal alone, with nothing of
the pipeline imported (``status`` stays quick and needs no key).

Each row says when its state was last seen (the last poll, from ``batches/seen.json``, or the
journal's last change), and a batch pending or running past :data:`STALE_AFTER_H` is flagged
with what to do about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..folder.layout import JOURNAL_NAME

# The service targets 24 h and expires a batch at 48 h with no results; past 26 h (the target
# and two hours of polling slack) a batch is late enough to say so, early enough to act on.
STALE_AFTER_H = 26.0
OPEN_STATES = ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")


def batch_rows(run_dir: Path) -> list[dict[str, Any]]:
    if not (run_dir / JOURNAL_NAME).exists():
        return []  # a live-mode folder: the journal's imports (the plan, the store) not loaded
    from ..folder.batches import Journal, read_seen, seconds_since

    seen = read_seen(run_dir)
    rows = []
    for rec in Journal(run_dir).all_records():
        row = rec.to_json()
        last = seen.get(rec.display_name) or {}
        # The later of the last poll and the journal's last change of state.
        row["seen_at"] = max(str(last.get("seen_at") or ""), rec.state_at or "") or None
        row["open"] = rec.phase.open
        row["stale"] = bool(
            rec.phase.open and row["state"] in OPEN_STATES
            and seconds_since(str(row["created_at"])) > STALE_AFTER_H * 3600
        )
        rows.append(row)
    return rows


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


def state_word(state: str) -> str:
    return str(state).removeprefix("BATCH_STATE_").lower()


def by_state(rows: list[dict[str, Any]]) -> str:
    """"2 running, 1 pending, 3 succeeded": the batches by state, for a headline or a log line."""
    counts: dict[str, int] = {}
    for r in rows:
        word = state_word(r["state"]) if r["state"] else "unsent"
        counts[word] = counts.get(word, 0) + 1
    return ", ".join(f"{n} {word}" for word, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def headline(rows: list[dict[str, Any]], run_state: str) -> str:
    """What the status headline says of a batch folder: it follows the rows, so a folder whose
    batches were all cancelled does not still read "batches running"."""
    if not rows:
        return run_state
    if any(r["open"] for r in rows):
        return f"batches: {by_state([r for r in rows if r['open']])}"
    if run_state == "batches running":
        return f"no batch running ({by_state(rows)})"
    return run_state


def format_batches(rows: list[dict[str, Any]], run_dir: Path | None = None) -> str:
    lines = ["batches:"]
    for r in rows:
        state = state_word(r["state"])
        seen = r.get("seen_at")
        when = f", as of the poll {age(seen)} ago" if seen and r.get("open") else ""
        lines.append(
            f"  {r['name'] or '(not created)':<44} {state + when:<34} {r['jobs']:>6} jobs "
            f"{r['succeeded']:>6} ok {r['failed']:>5} failed  {age(str(r['created_at']))} old"
        )
        if r.get("wave"):
            lines.append(f"    wave {r['wave']} of its chains")
        if r.get("note"):
            lines.append(f"    {r['note']}")
    stale = [r for r in rows if r.get("stale")]
    if stale:
        where = str(run_dir) if run_dir is not None else "DIR"
        lines.append(
            f"  {len(stale)} batch(es) {state_word(stale[0]['state'])} for over "
            f"{STALE_AFTER_H:g} h, past the service's 24 h target (at 48 h they expire with no "
            f"results): wait, or `batchgen cancel {where}` to send their jobs back to pending "
            "(a live run or a new batch then makes them)"
        )
    if any(r.get("open") for r in rows) and not any(r.get("seen_at") for r in rows if r["open"]):
        lines.append("  (states as last recorded; `batchgen status --refresh` asks the service)")
    return "\n".join(lines)
