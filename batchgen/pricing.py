"""What a job costs: the prices in the model table (``data/models.json``, read through
:mod:`batchgen.catalog`), overridable with ``--prices FILE``.

Bill from the response's ``usageMetadata`` when present, from the table when not. The budget cap
reserves :meth:`PriceTable.reserve` before each request: an upper bound, so that no request that
starts can take the spend past the cap.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import BUILTIN, CAPABILITY_FIELDS, load_raw
from .errors import InputError, Problem
from .spec import DEFAULT_MODEL, JobSpec

log = logging.getLogger(__name__)

# Typical text-side output of gemini-3-pro-image per image: its thinking plus a short answer.
TYPICAL_TEXT_TOKENS = 300
# The most text-side output one image answer is assumed to carry, for budget reservations.
MAX_TEXT_TOKENS = 2000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    output_image_per_1m: float
    output_text_per_1m: float
    input_per_1m: float
    image_tokens: dict[str, int]
    input_image_tokens: int
    batch_discount: float = 0.5
    # Service tier -> multiplier of the standard prices above (Flex: 0.5).
    tiers: tuple[tuple[str, float], ...] = (("standard", 1.0),)
    model: str = ""


@dataclass(frozen=True, slots=True)
class CostLine:
    """One row that drives an estimate, for ``batchgen estimate``."""

    model: str
    image_size: str
    images: int
    unit_usd: float

    @property
    def total_usd(self) -> float:
        return self.images * self.unit_usd


@dataclass(frozen=True, slots=True)
class JobCost:
    """One job's cost split into what drives it; ``total_usd`` is what :meth:`estimate` gives."""

    image_usd: float
    text_usd: float
    prompt_usd: float
    references_usd: float

    @property
    def total_usd(self) -> float:
        return self.image_usd + self.text_usd + self.prompt_usd + self.references_usd


def _prompt_text_tokens(spec: JobSpec) -> int:
    return len(spec.prompt) // 4 + 1


_PRICE_FIELDS = ("output_image_per_1m", "output_text_per_1m", "input_per_1m", "batch_discount")
_FIELDS = (*_PRICE_FIELDS, "image_tokens", "input_image_tokens")


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _model_price(source: str, model: str, fields: dict[str, Any]) -> ModelPrice:
    """One model's prices, every field checked: a negative or string price would bill $0 or
    crash mid-run, and a budget computed from it would no longer cap anything."""

    def bad(field: str, message: str) -> InputError:
        return InputError(f"{source}: {model}: {field}: {message}")

    unknown = [k for k in fields if k not in _FIELDS and k not in CAPABILITY_FIELDS]
    if unknown:
        known = ", ".join((*_FIELDS, *CAPABILITY_FIELDS))
        raise bad(str(unknown[0]), f"unknown field (known: {known})")
    missing = [k for k in _FIELDS if k not in fields and k != "batch_discount"]
    if missing:
        raise bad(missing[0], "required")
    for field in _PRICE_FIELDS:
        if field not in fields:
            continue
        value = fields[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(field, f"must be a number, not {_show(value)}")
        if not math.isfinite(value) or value < 0:
            raise bad(field, f"must be a finite number >= 0, not {_show(value)}")
        if field == "batch_discount" and value > 1:
            raise bad(field, f"must be between 0 and 1 (a multiplier), not {_show(value)}")
    sizes = fields["image_tokens"]
    if not isinstance(sizes, dict) or not sizes:
        raise bad("image_tokens", 'must be a non-empty object of size -> tokens, e.g. {"1K": 1120}')
    for size, tokens in sizes.items():
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
            raise bad("image_tokens", f"{size}: must be a whole number > 0, not {_show(tokens)}")
    tokens = fields["input_image_tokens"]
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise bad("input_image_tokens", f"must be a whole number >= 0, not {_show(tokens)}")
    tiers = fields.get("tiers", {"standard": 1.0})
    if not isinstance(tiers, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in tiers.values()
    ):
        raise bad("tiers", 'must be an object of tier -> price multiplier, e.g. {"flex": 0.5}')
    return ModelPrice(
        output_image_per_1m=float(fields["output_image_per_1m"]),
        output_text_per_1m=float(fields["output_text_per_1m"]),
        input_per_1m=float(fields["input_per_1m"]),
        image_tokens=dict(sizes),
        input_image_tokens=tokens,
        batch_discount=float(fields.get("batch_discount", 0.5)),
        tiers=tuple((str(k), float(v)) for k, v in tiers.items()),
        model=model,
    )


BUILTIN_PRICES = BUILTIN


class PriceTable:
    def __init__(
        self,
        models: dict[str, ModelPrice],
        *,
        batch: bool = False,
        source: str = BUILTIN_PRICES,
        tier: str = "standard",
    ) -> None:
        self.models = models
        self.batch = batch
        # Live mode's service tier (run --tier): its multiplier from the table's "tiers".
        self.tier = tier
        self.unpriced_tiers: set[tuple[str, str]] = set()
        self.seen: set[str] = set()
        self.source = source
        # What jobs asked for that the table could not price exactly (see check_covered).
        self.unpriced: set[tuple[str, str]] = set()
        self.unknown_models: set[str] = set()

    @classmethod
    def load(
        cls, override: Path | None = None, *, batch: bool = False, tier: str = "standard"
    ) -> PriceTable:
        raw = load_raw(override)
        source = str(override) if override is not None else BUILTIN_PRICES
        models: dict[str, ModelPrice] = {}
        for model, fields in raw.items():
            models[model] = _model_price(source, model, fields)
        return cls(models, batch=batch, source=source, tier=tier)

    def at_tier(self, tier: str) -> PriceTable:
        """The same table priced at another service tier (the estimate's columns, a fallback)."""
        other = PriceTable(self.models, batch=False, source=self.source, tier=tier)
        other.unpriced, other.unknown_models = self.unpriced, self.unknown_models
        other.unpriced_tiers, other.seen = self.unpriced_tiers, self.seen
        return other

    def check_tiers(self, tiers: tuple[str, ...]) -> None:
        """Every model priced so far must have a price at each tier a run may fall back to."""
        for tier in tiers:
            other = self.at_tier(tier)
            for model in sorted(self.seen):
                other._factor(self.models[model])

    def price(self, model: str) -> ModelPrice:
        found = self.models.get(model)
        if found is not None:
            self.seen.add(model)
        if found is None:
            # Priced like the default model so the pass can go on; check_covered refuses it.
            self.unknown_models.add(model)
            return self.models[DEFAULT_MODEL]
        return found

    def check_covered(self) -> list[str]:
        """After a pass over the jobs, an :class:`InputError` naming the price file and the
        missing key if a model or an image size in use has no price.

        A fallback price could be lower than the truth, and a budget computed from it would no
        longer cap anything. Returns warnings (none today), for the callers' uniformity.
        """
        problems = [
            Problem(
                self.source, 0, model,
                "no price for this model, which the manifest uses; price it in a --prices FILE "
                "(output_image_per_1m, output_text_per_1m, input_per_1m, image_tokens, "
                "input_image_tokens)",
            )
            for model in sorted(self.unknown_models)
        ]
        problems += [
            Problem(
                self.source, 0, f"{model}: image_tokens",
                f"no price for image size {size}, which the manifest uses; "
                f'add it, e.g. "image_tokens": {{"{size}": TOKENS}}',
            )
            for model, size in sorted(self.unpriced)
        ]
        problems += [
            Problem(
                self.source, 0, f"{model}: tiers",
                f"no price for the {tier} tier, which this run uses (--tier); add it, e.g. "
                f'"tiers": {{"{tier}": MULTIPLIER}} (of the standard price), or use another '
                "tier",
            )
            for model, tier in sorted(self.unpriced_tiers)
        ]
        if problems:
            raise InputError(problems)
        return []

    def _factor(self, price: ModelPrice) -> float:
        if self.batch:
            return price.batch_discount
        if self.tier == "standard":
            return 1.0
        found = dict(price.tiers).get(self.tier)
        if found is None:
            # Priced at the dearest tier the table knows, until check_covered stops it.
            self.unpriced_tiers.add((price.model, self.tier))
            return max(max((v for _, v in price.tiers), default=1.0), 1.0)
        return found

    def image_unit(self, model: str, image_size: str) -> float:
        p = self.price(model)
        tokens = p.image_tokens.get(image_size)
        if tokens is None:
            if model in self.models:
                self.unpriced.add((model, image_size))
            tokens = max(p.image_tokens.values())  # never cheaper, until check_covered stops it
        return tokens * p.output_image_per_1m / 1e6 * self._factor(p)

    def text_unit(self, model: str, text_tokens: int = TYPICAL_TEXT_TOKENS) -> float:
        """Typical thinking and text output of one image answer."""
        p = self.price(model)
        return text_tokens * p.output_text_per_1m / 1e6 * self._factor(p)

    def reference_unit(self, model: str) -> float:
        """One reference image sent as input."""
        p = self.price(model)
        return p.input_image_tokens * p.input_per_1m / 1e6 * self._factor(p)

    def parts(self, spec: JobSpec, text_tokens: int = TYPICAL_TEXT_TOKENS) -> JobCost:
        """What one job costs, split by what drives it (for ``batchgen estimate``)."""
        p = self.price(spec.model)
        return JobCost(
            image_usd=self.image_unit(spec.model, spec.image_size),
            text_usd=self.text_unit(spec.model, text_tokens),
            prompt_usd=_prompt_text_tokens(spec) * p.input_per_1m / 1e6 * self._factor(p),
            references_usd=len(spec.references) * self.reference_unit(spec.model),
        )

    def _job_cost(self, spec: JobSpec, text_tokens: int) -> float:
        return self.parts(spec, text_tokens).total_usd

    def estimate(self, spec: JobSpec) -> float:
        """What one job typically costs."""
        return self._job_cost(spec, TYPICAL_TEXT_TOKENS)

    def reserve(self, spec: JobSpec) -> float:
        """The most one job is expected to cost: what the budget holds back while it runs."""
        return self._job_cost(spec, MAX_TEXT_TOKENS)

    def from_usage(self, spec: JobSpec, usage: dict[str, Any] | None) -> float:
        """Bill an answer from its usageMetadata; thinking is billed as text output."""
        if not usage:
            return self.estimate(spec)
        p = self.price(spec.model)
        prompt = int(usage.get("promptTokenCount") or usage.get("prompt_token_count") or 0)
        candidates = int(
            usage.get("candidatesTokenCount") or usage.get("candidates_token_count") or 0
        )
        thoughts = int(usage.get("thoughtsTokenCount") or usage.get("thoughts_token_count") or 0)
        details = usage.get("candidatesTokensDetails") or usage.get("candidates_tokens_details")
        image_tokens = 0
        if isinstance(details, list):
            for d in details:
                if isinstance(d, dict) and str(d.get("modality", "")).upper() == "IMAGE":
                    image_tokens += int(d.get("tokenCount") or d.get("token_count") or 0)
        text_tokens = max(candidates - image_tokens, 0) + thoughts
        usd = (
            image_tokens * p.output_image_per_1m
            + text_tokens * p.output_text_per_1m
            + prompt * p.input_per_1m
        ) / 1e6
        return round(usd * self._factor(p), 6)
