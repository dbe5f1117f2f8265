"""Service tiers as the fake serves them (shared/gemini-api.md "Service tiers").

The docs do not say what a shed flex request gets back, nor how a model without the tier
answers; the fake answers what batchgen must survive: a 429 or 503 for a shed request
(``flex_shed_rate``, ``flex_shed_status``) and a 400 naming the tier and the model for a tier
the model refuses (``tiers_refused``). Every answer served says its tier in
``x-gemini-service-tier``, as Priority's header does.
"""

from __future__ import annotations

from batchgen.catalog import load_builtin

from .faults import FakeConfig, FaultChooser
from .stats import FakeStats
from .validate import ApiError, ParsedRequest, invalid

TIER_HEADER = "x-gemini-service-tier"


def served_tier(req: ParsedRequest) -> str:
    return req.service_tier or "standard"


def refuse_tier(cfg: FakeConfig, model: str, req: ParsedRequest) -> None:
    """A 400 for a tier this model does not offer: checked with the body, before any quota."""
    tier = req.service_tier
    if tier is not None and tier in cfg.tiers_refused.get(model, ()):
        raise invalid(f"Service tier {tier} is not supported for models/{model}.")


def shed(cfg: FakeConfig, req: ParsedRequest, chooser: FaultChooser, stats: FakeStats) -> None:
    """Shed a share of flex requests, as sheddable capacity does under load."""
    if req.service_tier == "flex" and chooser.chance(cfg.flex_shed_rate):
        stats.record_fault("flex_shed")
        if cfg.flex_shed_status == 503:
            raise ApiError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        raise ApiError(
            429, "RESOURCE_EXHAUSTED",
            "Flex capacity is exhausted for now; please retry later or use the standard tier.",
        )  # fmt: skip


def extra_latency(cfg: FakeConfig, req: ParsedRequest) -> float:
    """Flex answers take minutes (a 1-15 minute target): the fake's share of that, in seconds."""
    return cfg.flex_latency_s if req.service_tier == "flex" else 0.0


def factor(model: str, req: ParsedRequest) -> float:
    """The tier's multiplier of the standard price, as the model table lists it (Flex: 0.5)."""
    tiers = load_builtin().get(model, {}).get("tiers") or {}
    return float(tiers.get(served_tier(req), 1.0))
