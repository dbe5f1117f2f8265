"""Counters the fake server keeps, readable from any thread.

A ThreadedFakeServer updates these on its own loop while the test thread reads them, and
iterating a Counter while another thread inserts a key raises. So the fields are private, every
update and every read takes one lock, and readers get copies: a test can never see a Counter
change under it, and ``srv.stats.reset()`` works the same in-process or threaded.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

# Arrivals kept for the timeline (when each request came in, and how it was answered).
TIMELINE_MAX = 200_000
# Generation requests kept as read (prompt, system instruction, safety settings, tools).
REQUESTS_KEPT = 10_000


class FakeStats:
    """What the fake served: requests, statuses, faults, and what the user was billed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self._clear()

    def _clear(self) -> None:
        self._requests = 0
        self._by_status: dict[int, int] = {}
        self._billed_images = 0
        self._billed_usd = 0.0
        self._prompts: collections.Counter[str] = collections.Counter()
        self._billed_prompts: collections.Counter[str] = collections.Counter()
        self._faults: collections.Counter[str] = collections.Counter()
        # Batch and Files API: kept apart from the live counters above, so a test can prove an
        # image was billed once across both modes.
        self._batch_billed_images = 0
        self._batch_billed_usd = 0.0
        self._batch_billed_prompts: collections.Counter[str] = collections.Counter()
        self._batches_created = 0
        self._batches_by_name: collections.Counter[str] = collections.Counter()
        self._batch_line_errors = 0
        self._batch_duplicate_lines = 0
        self._files_uploaded = 0
        self._bytes_uploaded = 0
        self._files_deleted = 0
        self._timeline: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=TIMELINE_MAX
        )
        self._requests_seen: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=REQUESTS_KEPT
        )
        # A reset mid-run should not forget requests still being handled.
        self._max_in_flight = self._in_flight

    # -- updates (server side) -------------------------------------------------------------

    def begin(self) -> float:
        """Count a request in; returns its arrival time (``time.monotonic()``) for :meth:`end`."""
        now = time.monotonic()
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight
        return now

    def end(self, status: int, arrived: float | None = None) -> None:
        """``status`` 0 means no HTTP answer was sent (the connection was dropped)."""
        with self._lock:
            self._in_flight -= 1
            self._by_status[status] = self._by_status.get(status, 0) + 1
            if arrived is not None:
                self._timeline.append((arrived, status))

    def record_prompt(self, prompt: str) -> None:
        with self._lock:
            self._prompts[prompt] += 1

    def record_request(self, fields: dict[str, Any]) -> None:
        with self._lock:
            self._requests_seen.append(fields)

    def requests_seen(self) -> list[dict[str, Any]]:
        """The last generation requests as read (ParsedRequest.extras), oldest first."""
        with self._lock:
            return list(self._requests_seen)

    def record_fault(self, name: str) -> None:
        with self._lock:
            self._faults[name] += 1

    def record_billed(self, prompt: str, usd: float) -> None:
        with self._lock:
            self._billed_images += 1
            self._billed_usd += usd
            self._billed_prompts[prompt] += 1

    def record_batch_billed(self, prompt: str, usd: float) -> None:
        with self._lock:
            self._batch_billed_images += 1
            self._batch_billed_usd += usd
            self._batch_billed_prompts[prompt] += 1

    def record_batch_created(self, display_name: str) -> None:
        with self._lock:
            self._batches_created += 1
            self._batches_by_name[display_name] += 1

    def record_batch_line(self, *, error: bool = False, duplicate: bool = False) -> None:
        with self._lock:
            self._batch_line_errors += error
            self._batch_duplicate_lines += duplicate

    def record_upload(self, size: int) -> None:
        with self._lock:
            self._files_uploaded += 1
            self._bytes_uploaded += size

    def record_file_deleted(self) -> None:
        with self._lock:
            self._files_deleted += 1

    def reset(self) -> None:
        with self._lock:
            self._clear()

    # -- reads (any thread) ----------------------------------------------------------------

    @property
    def requests(self) -> int:
        return self._requests

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @property
    def billed_images(self) -> int:
        return self._billed_images

    @property
    def billed_usd(self) -> float:
        return round(self._billed_usd, 6)

    @property
    def by_status(self) -> dict[int, int]:
        with self._lock:
            return dict(self._by_status)

    @property
    def prompts(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._prompts)

    @property
    def billed_prompts(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._billed_prompts)

    @property
    def faults(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._faults)

    @property
    def batch_billed_images(self) -> int:
        return self._batch_billed_images

    @property
    def batch_billed_usd(self) -> float:
        return round(self._batch_billed_usd, 6)

    @property
    def batch_billed_by_prompt(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._batch_billed_prompts)

    @property
    def batches_created(self) -> int:
        return self._batches_created

    @property
    def batches_created_by_display_name(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._batches_by_name)

    @property
    def batch_line_errors(self) -> int:
        return self._batch_line_errors

    @property
    def batch_duplicate_lines(self) -> int:
        return self._batch_duplicate_lines

    @property
    def files_uploaded(self) -> int:
        return self._files_uploaded

    @property
    def bytes_uploaded(self) -> int:
        return self._bytes_uploaded

    @property
    def files_deleted(self) -> int:
        return self._files_deleted

    @property
    def timeline(self) -> list[tuple[float, int]]:
        """(arrival time on the server's monotonic clock, HTTP status) per request, by arrival."""
        with self._lock:
            return sorted(self._timeline)

    def snapshot(self) -> dict[str, Any]:
        """Everything at one instant, JSON-able (status codes become string keys in JSON)."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "billed_images": self._billed_images,
                "billed_usd": round(self._billed_usd, 6),
                "prompts": dict(self._prompts),
                "billed_prompts": dict(self._billed_prompts),
                "faults": dict(self._faults),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "batch_billed_images": self._batch_billed_images,
                "batch_billed_usd": round(self._batch_billed_usd, 6),
                "batch_billed_by_prompt": dict(self._batch_billed_prompts),
                "batches_created": self._batches_created,
                "batches_created_by_display_name": dict(self._batches_by_name),
                "batch_line_errors": self._batch_line_errors,
                "batch_duplicate_lines": self._batch_duplicate_lines,
                "files_uploaded": self._files_uploaded,
                "bytes_uploaded": self._bytes_uploaded,
                "files_deleted": self._files_deleted,
            }

    def __repr__(self) -> str:
        return (
            f"FakeStats(requests={self._requests}, by_status={self._by_status}, "
            f"billed_images={self._billed_images}, billed_usd={self.billed_usd}, "
            f"faults={dict(self._faults)}, max_in_flight={self._max_in_flight})"
        )
