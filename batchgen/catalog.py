"""The model table (``data/models.json``): what each model batchgen knows offers, and its prices.

One file, read by validation (sizes, ratios, reference limit, Search grounding), by
:mod:`batchgen.pricing` (live, batch and tier prices) and by the fake server, so none of them can
disagree. ``--prices FILE`` has the same shape and merges into it key by key; a model named only
there is known from then on (its capabilities default to the widest the table lists).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InputError
from .spec import ASPECT_RATIOS, BASE_PIXELS, MAX_REFERENCE_IMAGES, SIZE_SCALE, output_pixels

BUILTIN = "batchgen/data/models.json"
BYTES_PER_PIXEL = 1.43
RESULT_LINE_OVERHEAD = 16 * 1024
# What a model entry may carry beside its prices (pricing.py checks the prices).
CAPABILITY_FIELDS = (
    "label", "deprecated", "aspect_ratios", "sends_image_size", "max_references",
    "google_search", "tiers", "sources", "image_bytes",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """What one model offers, as validation needs it."""

    name: str
    aspect_ratios: tuple[str, ...]
    image_sizes: tuple[str, ...]  # the keys of its image_tokens
    sends_image_size: bool
    max_references: int
    google_search: bool
    deprecated: str | None = None
    # Expected PNG bytes of one 1:1 image per size (other ratios scale by their pixels).
    image_bytes: tuple[tuple[str, int], ...] = ()


def load_builtin() -> dict[str, Any]:
    """The built-in table as read (shared: do not modify)."""
    return _builtin()


@functools.cache
def _builtin() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(
        resources.files("batchgen").joinpath("data/models.json").read_text("utf-8")
    )
    return raw


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Key by key, one level down too: overriding the 1K and 2K ``image_tokens`` must keep the
    table's 4K price, not drop it (a 4K image then fell back to a cheaper size's price)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_raw(override: Path | None = None) -> dict[str, dict[str, Any]]:
    """The table's models (``_`` keys dropped), with ``override``'s entries merged in."""
    raw = {k: dict(v) for k, v in _builtin().items() if not k.startswith("_")}
    if override is None:
        return raw
    try:
        extra = json.loads(override.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{override}: cannot read prices: {exc}") from exc
    if not isinstance(extra, dict):
        raise InputError(f"{override}: prices must be a JSON object of models")
    for model, fields in extra.items():
        if model.startswith("_"):
            continue
        if not isinstance(fields, dict):
            raise InputError(f"{override}: {model}: must be an object")
        # A model the table has keeps every field the file does not name; a new one must be
        # priced in full (a guess could be lower than the truth): pricing.py checks that.
        raw[model] = _merge(raw.get(model, {}), fields)
    return raw


def _info(name: str, fields: dict[str, Any], source: str) -> ModelInfo:
    ratios = fields.get("aspect_ratios")
    if ratios is not None and (
        not isinstance(ratios, list) or not ratios or not set(ratios) <= set(ASPECT_RATIOS)
    ):
        msg = f"must be a list of ratios among {', '.join(ASPECT_RATIOS)}"
        raise InputError(f"{source}: {name}: aspect_ratios: {msg}")
    refs = fields.get("max_references", MAX_REFERENCE_IMAGES)
    if isinstance(refs, bool) or not isinstance(refs, int) or not 0 <= refs <= 100:
        raise InputError(f"{source}: {name}: max_references: must be a whole number 0-100")
    tokens = fields.get("image_tokens")
    sizes = fields.get("image_bytes") or {}
    if not isinstance(sizes, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes.values()
    ):
        raise InputError(f"{source}: {name}: image_bytes: must map sizes to whole byte counts")
    return ModelInfo(
        name=name,
        aspect_ratios=tuple(str(r) for r in ratios) if isinstance(ratios, list) else ASPECT_RATIOS,
        image_sizes=tuple(str(s) for s in tokens) if isinstance(tokens, dict) else (),
        sends_image_size=fields.get("sends_image_size", True) is not False,
        max_references=refs,
        google_search=fields.get("google_search", True) is not False,
        deprecated=fields.get("deprecated") if isinstance(fields.get("deprecated"), str) else None,
        image_bytes=tuple((str(k), int(v)) for k, v in sizes.items()),
    )


class ModelTable:
    """The models batchgen knows, by name."""

    def __init__(self, models: dict[str, ModelInfo]) -> None:
        self.models = models

    @classmethod
    def load(cls, override: Path | None = None) -> ModelTable:
        source = str(override) if override is not None else BUILTIN
        return cls({name: _info(name, f, source) for name, f in load_raw(override).items()})

    def get(self, name: str) -> ModelInfo | None:
        return self.models.get(name)

    def unknown(self, name: str) -> str:
        """The message for a model the table does not have, with the likely meaning."""
        import difflib  # here, not at the top: only a misspelt model needs it

        close = difflib.get_close_matches(name, list(self.models), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return (
            f"unknown model {name!r}{hint} (known: {', '.join(self.models)}; to use another, "
            "describe it in a --prices FILE: output_image_per_1m, output_text_per_1m, "
            "input_per_1m, image_tokens, input_image_tokens)"
        )


@functools.cache
def builtin_table() -> ModelTable:
    return ModelTable.load()


def result_line_bytes(model: str, image_size: str, aspect_ratio: str | None) -> int:
    """What one image adds to a batch's results file: its base64 (x4/3), and the JSON, text
    and thought signature around it (interim thought images are not counted: the cap's margin
    under the Files API's 2 GB is for them)."""
    info = builtin_table().get(model)
    ratio = aspect_ratio if aspect_ratio in BASE_PIXELS else "1:1"
    size = image_size if image_size in SIZE_SCALE else "1K"
    w, h = output_pixels(ratio, size)
    sq_w, sq_h = output_pixels("1:1", size)
    square = dict(info.image_bytes).get(size) if info is not None else None
    # No figure in the table: the density of the reported 2K image (6 MB for 4.2 MP).
    raw = square * (w * h) / (sq_w * sq_h) if square else w * h * BYTES_PER_PIXEL
    return int(raw * 4 / 3) + RESULT_LINE_OVERHEAD
