"""What the fake server should do wrong, and when.

The config is a plain mutable dataclass because tests change it while the server runs (a
ThreadedFakeServer's config is written from the test thread and read on the server's loop; each
field write is a single atomic attribute store, so no lock is needed for that).
"""

from __future__ import annotations

import collections
import logging
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from batchgen.catalog import load_builtin

logger = logging.getLogger(__name__)

# Every fault the server knows. "ok" is listed so scripts can say "no fault this time".
FAULT_NAMES: tuple[str, ...] = (
    "ok",
    "429",
    "429_retry_after",
    "429_bare",
    "429_daily",
    "429_capacity",
    "500",
    "503",
    "504",
    "408",
    "502_html",
    "200_html",
    "drop",
    "truncate",
    "slow",
    "block",
    "image_safety",
    "text_only",
    "400",
    "empty",
)
URL_OUTPUT_MODES: tuple[str, ...] = ("file_data", "text", "markdown", "escaped", "data")
# What a results download can do wrong (FakeConfig.batch_download_script), one per download:
# "cut" ends cleanly after half the file (HTTP/1.0 style: no Content-Length, no chunking, the
# connection closed), "drop" hangs up half-way short of its Content-Length, "503" refuses,
# "garble" corrupts one line in transit, "endless" follows the file with lines forever, "stall"
# sends half and then nothing.
DOWNLOAD_FAULTS: tuple[str, ...] = ("ok", "cut", "drop", "503", "garble", "endless", "stall")
# How the quota limiter counts: over the last ``rate_window_s`` seconds, or per fixed window.
WINDOW_KINDS: tuple[str, ...] = ("sliding", "fixed")
# What its refusals look like: a quota 429 with RetryInfo, or an overload 429 with no delay.
LIMIT_STYLES: tuple[str, ...] = ("quota", "capacity")


@dataclass
class Rule:
    """Serve ``fault`` to requests whose prompt text contains ``match``.

    ``times`` limits it to the first N matching requests; the server counts uses itself (keyed
    by the Rule object), so the rule stays as written and a reset makes it fire again.
    """

    match: str
    fault: str
    times: int | None = None

    def __post_init__(self) -> None:
        check_fault(self.fault)


def default_tiers_refused() -> dict[str, list[str]]:
    table = load_builtin()
    return {
        name: ["flex"]
        for name, fields in table.items()
        if not name.startswith("_") and "flex" not in (fields.get("tiers") or {})
    }


@dataclass
class FakeConfig:
    api_key: str = "fake-key"
    # The preview model is shut down, so it is deliberately absent: it answers 404.
    models: tuple[str, ...] = (
        "gemini-3-pro-image", "gemini-3.1-flash-image", "gemini-3.1-flash-lite-image",
        "gemini-2.5-flash-image",
    )  # fmt: skip
    latency_s: float = 0.0
    full_size: bool = False
    image_bytes: int | None = None
    thought_images: int = 1
    # A new picture per request, as the service draws (a redo gets another image); False: a
    # prompt's picture is the same every time (a test comparing two answers' bytes).
    fresh_pictures: bool = True
    mislabel_jpeg_rate: float = 0.0
    url_output: str | None = None
    rpm_limit: int | None = None
    ipm_limit: int | None = None
    rate_window_s: float = 60.0
    rate_window_kind: str = "sliding"
    rate_limit_style: str = "quota"
    faults: dict[str, float] = field(default_factory=dict)
    script: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    retry_delay_s: float = 0.05
    slow_s: float = 30.0
    max_request_bytes: int = 100 * 1024 * 1024
    seed: int = 0
    # Batch API. Each knob is read when a batch is created and kept with it, so a test can
    # change the config between batches; prompt rules and faults apply per line when it runs.
    batch_seconds: float = 2.0  # PENDING, then RUNNING after a quarter, done after all of it
    batch_duplicate_rate: float = 0.0  # share of result lines written twice, each billed
    batch_expire: bool = False  # end in BATCH_STATE_EXPIRED with no results
    batch_fail: bool = False  # end in BATCH_STATE_FAILED with no results
    batch_create_503: int = 0  # the first N creates make the batch but answer 503
    batch_line_error_rate: float = 0.0  # share of lines that come back as retryable errors
    batch_output_lag: int = 0  # reads of a succeeded batch that show it without its output
    batch_inline_max_bytes: int = 20 * 1024 * 1024  # a create with inline requests, at most
    batch_download_script: list[str] = field(default_factory=list)  # DOWNLOAD_FAULTS, in turn
    batch_get_503: int = 0  # the next N reads of a batch (get) answer 503
    batch_garbled_lines: int = 0  # the first N result lines of a batch are written unreadable
    batch_oversized_lines: int = 0  # the first N responses of a batch are over 256 MiB
    # Service tiers (fake/tiers.py). The share of flex requests shed, answered with
    # flex_shed_status (429 or 503); extra seconds a flex answer takes; the tiers each model
    # refuses with a 400 (default: what the model table's "tiers" lacks, flex only, since no
    # model lists priority and the service has it).
    # Results downloads: the next download_cuts answers hang up after download_cut_bytes of
    # what they send; download_ranges: whether a Range request is honoured (206) or ignored.
    download_cut_bytes: int = 0
    download_cuts: int = 0
    download_ranges: bool = True
    flex_shed_rate: float = 0.0
    flex_shed_status: int = 429
    flex_latency_s: float = 0.0
    tiers_refused: dict[str, list[str]] = field(default_factory=default_tiers_refused)

    def __post_init__(self) -> None:
        # Catch typos at construction: a misspelt fault would otherwise silently mean "ok".
        for name in (*self.faults, *self.script):
            check_fault(name)
        if self.url_output is not None and self.url_output not in URL_OUTPUT_MODES:
            raise ValueError(f"url_output must be one of {URL_OUTPUT_MODES} or None")
        if self.rate_window_kind not in WINDOW_KINDS:
            raise ValueError(f"rate_window_kind must be one of {WINDOW_KINDS}")
        if self.rate_limit_style not in LIMIT_STYLES:
            raise ValueError(f"rate_limit_style must be one of {LIMIT_STYLES}")
        if not self.rate_window_s > 0:
            raise ValueError("rate_window_s must be positive")
        if not 0 <= self.thought_images <= 2:
            raise ValueError("thought_images must be 0, 1 or 2")
        if self.flex_shed_status not in (429, 503):
            raise ValueError("flex_shed_status must be 429 or 503")
        if self.flex_latency_s < 0:
            raise ValueError("flex_latency_s must be >= 0")
        for rate in ("batch_duplicate_rate", "batch_line_error_rate", "flex_shed_rate"):
            if not 0.0 <= getattr(self, rate) <= 1.0:
                raise ValueError(f"{rate} must be between 0 and 1")
        if min(self.batch_seconds, self.batch_create_503, self.batch_output_lag, self.batch_get_503,
               self.batch_garbled_lines, self.batch_oversized_lines) < 0:
            raise ValueError("batch_seconds, batch_create_503, batch_output_lag, batch_get_503, "
                             "batch_garbled_lines and batch_oversized_lines must be >= 0")
        for name in self.batch_download_script:
            if name not in DOWNLOAD_FAULTS:
                raise ValueError(f"unknown download fault {name!r}; known: "
                                 f"{', '.join(DOWNLOAD_FAULTS)}")
        self.models = tuple(self.models)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = list(self.models)
        return out


def check_fault(name: str) -> None:
    if name not in FAULT_NAMES:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")


_FIELD_NAMES = frozenset(f.name for f in fields(FakeConfig))


def apply_config_json(config: FakeConfig, data: object) -> None:
    """Update ``config`` in place from a JSON object (the ``POST /_fake/config`` body).

    Everything is checked before anything is assigned, so a bad request changes nothing.
    """
    if not isinstance(data, dict):
        raise ValueError("config body must be a JSON object")
    unknown = set(data) - _FIELD_NAMES
    if unknown:
        raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
    updates: dict[str, Any] = dict(data)
    if "rules" in updates:
        rules = updates["rules"]
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            raise ValueError("rules must be a list of objects")
        updates["rules"] = [Rule(**r) for r in rules]
    if "models" in updates:
        updates["models"] = tuple(updates["models"])
    for name in ("script", "batch_download_script"):
        if name in updates:
            updates[name] = list(updates[name])
    # Build a throwaway config to run the same validation the constructor does.
    merged = {f.name: getattr(config, f.name) for f in fields(FakeConfig)}
    merged.update(updates)
    FakeConfig(**merged)
    for name, value in updates.items():
        setattr(config, name, value)


class FaultChooser:
    """Picks the fault for one request: rules, then script, then rates, else "ok"."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        # id(rule) -> (rule, uses); holding the rule keeps its id from being reused.
        self._rule_uses: dict[int, tuple[Rule, int]] = {}
        # The script list we have been popping from and what we took, so a reset can put the
        # entries back; a new list object (config replaced) starts a fresh record.
        self._script: list[str] | None = None
        self._consumed: list[str] = []

    def reset(self, config: FakeConfig) -> None:
        """Back to how a fresh server with ``config`` would start: script replays, rules re-arm."""
        self.seed = config.seed
        self.rng = random.Random(config.seed)
        self._rule_uses.clear()
        if config.script is self._script and self._consumed:
            config.script[:0] = self._consumed
        self._script = None
        self._consumed = []

    def choose(self, config: FakeConfig, prompt: str) -> str:
        if config.seed != self.seed:
            # A live seed change should give the same sequence as a fresh server with that seed.
            self.seed = config.seed
            self.rng = random.Random(config.seed)
        for rule in list(config.rules):
            if rule.match not in prompt:
                continue
            _, used = self._rule_uses.get(id(rule), (rule, 0))
            if rule.times is not None and used >= rule.times:
                continue
            self._rule_uses[id(rule)] = (rule, used + 1)
            return rule.fault
        script = config.script
        if script is not self._script:
            self._script = script
            self._consumed = []
        if script:
            name = script.pop(0)
            self._consumed.append(name)
            return name
        if config.faults:
            r = self.rng.random()
            acc = 0.0
            for name, p in config.faults.items():
                acc += p
                if r < acc:
                    return name
        return "ok"

    def chance(self, rate: float) -> bool:
        # Skip the draw when off, so turning mislabelling on/off doesn't shift fault sequences.
        return rate > 0 and self.rng.random() < rate


class SlidingWindow:
    """Counts events over the last ``window`` seconds (a rolling window).

    A deque of (time, weight) pairs; old entries are dropped lazily on each call, so the cost is
    amortised O(1) per event no matter how high the rate.
    """

    def __init__(self) -> None:
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def clear(self) -> None:
        self._events.clear()
        self._total = 0

    def _prune(self, now: float, window: float) -> None:
        cutoff = now - window
        events = self._events
        while events and events[0][0] <= cutoff:
            self._total -= events.popleft()[1]

    def wait(self, now: float, limit: int, window: float) -> float:
        """Seconds until one more event fits, 0.0 if it fits now."""
        self._prune(now, window)
        if self._total < limit:
            return 0.0
        # Walk forward until enough weight has left the window to make room for one more.
        excess = self._total - limit + 1
        for t, weight in self._events:
            excess -= weight
            if excess <= 0:
                return max(0.0, t + window - now)
        return window  # limit <= 0: nothing ever fits, ask for a whole window

    def add(self, now: float, weight: int = 1) -> None:
        self._events.append((now, weight))
        self._total += weight

    @property
    def total(self) -> int:
        return self._total


class FixedWindow:
    """Counts events per fixed window: ``[k * window, (k + 1) * window)`` of the monotonic clock.

    The count starts over at each boundary, so a sender may get ``2 * limit`` through in a short
    span across one; a refusal is told to wait for the next boundary.
    """

    def __init__(self) -> None:
        self._index: int | None = None
        self._total = 0

    def clear(self) -> None:
        self._index = None
        self._total = 0

    def _roll(self, now: float, window: float) -> None:
        index = int(now // window)
        if index != self._index:
            self._index, self._total = index, 0

    def wait(self, now: float, limit: int, window: float) -> float:
        self._roll(now, window)
        if self._total < limit:
            return 0.0
        assert self._index is not None
        return max(0.0, (self._index + 1) * window - now)

    def add(self, now: float, window: float, weight: int = 1) -> None:
        self._roll(now, window)
        self._total += weight

    @property
    def total(self) -> int:
        return self._total


class RateWindow:
    """The limiter the config asks for: sliding or fixed, switched live when the config changes."""

    def __init__(self) -> None:
        self._sliding = SlidingWindow()
        self._fixed = FixedWindow()

    def clear(self) -> None:
        self._sliding.clear()
        self._fixed.clear()

    def wait(self, now: float, limit: int, cfg: FakeConfig) -> float:
        if cfg.rate_window_kind == "fixed":
            return self._fixed.wait(now, limit, cfg.rate_window_s)
        return self._sliding.wait(now, limit, cfg.rate_window_s)

    def add(self, now: float, cfg: FakeConfig) -> None:
        if cfg.rate_window_kind == "fixed":
            self._fixed.add(now, cfg.rate_window_s)
        else:
            self._sliding.add(now)
