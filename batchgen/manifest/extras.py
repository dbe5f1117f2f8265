"""The request's optional fields (``system_instruction``, ``safety_settings``, ``google_search``),
the model table's checks of a job, and ``{var}`` templates in metadata.

Wire names and allowed values follow Google's Gemini API reference (README, "Job
fields"); they are checked here, before anything is sent, so a misspelt threshold costs nothing.
"""

from __future__ import annotations

import string
from typing import Any

import orjson

from batchgen.catalog import ModelInfo
from batchgen.manifest.base import Bad, BadMeta, kind_of, parse_bool, string_of
from batchgen.spec import (
    DEPRECATED_HARM_CATEGORIES,
    HARM_CATEGORIES,
    HARM_THRESHOLDS,
    MetaValue,
    RequestExtras,
)

EXTRA_FIELDS = ("system_instruction", "safety_settings", "google_search")
_PREFIX = "HARM_CATEGORY_"


def parse_system_instruction(value: object, text: bool) -> str:
    instruction = string_of(value).strip()
    if not instruction:
        raise Bad("must not be empty")
    return instruction


def parse_google_search(value: object, text: bool) -> bool:
    return parse_bool(value, text)


def _category(raw: object) -> str:
    name = string_of(raw).strip().upper()
    if not name.startswith(_PREFIX):
        name = _PREFIX + name  # `harassment` for HARM_CATEGORY_HARASSMENT
    if name in DEPRECATED_HARM_CATEGORIES:
        raise Bad(f"{name} is deprecated and no longer supported by the Gemini API")
    if name not in HARM_CATEGORIES:
        raise Bad(f"category {raw!r} is not one of {', '.join(HARM_CATEGORIES)}")
    return name


def _threshold(raw: object) -> str:
    name = string_of(raw).strip().upper()
    if name not in HARM_THRESHOLDS:
        raise Bad(f"threshold {raw!r} is not one of {', '.join(HARM_THRESHOLDS)}")
    return name


def parse_safety_settings(value: object, text: bool) -> tuple[tuple[str, str], ...]:
    """A list of ``{category, threshold}``; in a CSV cell or ``--set`` also JSON, or the short
    form ``harassment=BLOCK_NONE;dangerous_content=BLOCK_ONLY_HIGH``."""
    if text and isinstance(value, str):
        cell = value.strip()
        if cell.startswith("["):
            try:
                value = orjson.loads(cell)
            except orjson.JSONDecodeError:
                raise Bad("is not valid JSON (a list of {category, threshold})") from None
        else:
            pairs = [p.partition("=") for p in cell.replace(",", ";").split(";") if p.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise Bad("write CATEGORY=THRESHOLD pairs separated by ';'")
            value = [{"category": c, "threshold": t} for c, _, t in pairs]
    if not isinstance(value, list) or not value:
        raise Bad(f"must be a list of {{category, threshold}}, not {kind_of(value)}")
    out: dict[str, str] = {}
    for item in value:
        if not isinstance(item, dict) or set(item) != {"category", "threshold"}:
            raise Bad("each item must be a mapping with exactly category and threshold")
        category = _category(item["category"])
        if category in out:
            raise Bad(f"{category} is set twice")
        out[category] = _threshold(item["threshold"])
    return tuple(out.items())


def extras_of(values: dict[str, Any]) -> RequestExtras | None:
    """The row's optional request fields, or None when it sets none (the common case)."""
    if not values.keys() & EXTRA_FIELDS:
        return None
    extras = RequestExtras(
        system_instruction=values.get("system_instruction"),
        safety_settings=values.get("safety_settings", ()),
        google_search=values.get("google_search", False),
    )
    return None if extras == RequestExtras() else extras


def hashed(extras: RequestExtras | None) -> dict[str, Any]:
    """What the job id hashes of them: only the fields set, so other jobs keep their ids."""
    if extras is None:
        return {}
    out: dict[str, Any] = {}
    if extras.google_search:
        out["google_search"] = True
    if extras.safety_settings:
        out["safety_settings"] = [list(p) for p in extras.safety_settings]
    if extras.system_instruction is not None:
        out["system_instruction"] = extras.system_instruction
    return out


def model_problems(
    info: ModelInfo, values: dict[str, Any], n_refs: int
) -> list[tuple[str, str]]:
    """(field, message) for each setting of the row that ``info``'s model does not offer."""
    out: list[tuple[str, str]] = []
    name = info.name
    ratio = values.get("aspect_ratio")
    if ratio is not None and ratio not in info.aspect_ratios:
        offered = ", ".join(info.aspect_ratios)
        out.append(("aspect_ratio", f"{ratio} is not offered by {name} (its ratios: {offered})"))
    size = values.get("image_size")
    if size is not None and not info.sends_image_size and size != "1K":
        out.append(("image_size", f"{name} takes no image_size (its images are ~1024 px)"))
    elif size is not None and info.sends_image_size and size not in info.image_sizes:
        offered = ", ".join(info.image_sizes)
        out.append(("image_size", f"{size} is not offered by {name} (its sizes: {offered})"))
    if n_refs > info.max_references:
        msg = f"{n_refs} reference images; {name} takes at most {info.max_references}"
        out.append(("images", msg))
    if values.get("google_search") and not info.google_search:
        out.append(("google_search", f"{name} does not offer Google Search grounding"))
    return out


# -- {var} in metadata ------------------------------------------------------------------------


def meta_templates(
    meta: tuple[tuple[str, MetaValue], ...], names: list[str]
) -> tuple[dict[str, str], list[BadMeta]]:
    """The meta keys whose text has ``{var}`` placeholders (key -> template), and the problems:
    a placeholder naming no var of the row, a key that is also a var's name."""
    templates: dict[str, str] = {}
    problems: list[BadMeta] = []
    for key, value in meta:
        if key in names:
            msg = f"is also the name of a var; a var is a column of its own: rename one ({key!r})"
            problems.append(BadMeta(key, msg))
        if not isinstance(value, str) or ("{" not in value and "}" not in value):
            continue
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            if names:  # a row without vars fills nothing in: its braces are only text
                problems.append(BadMeta(key, f"{exc} (write {{{{ and }}}} for literal braces)"))
            continue
        fields = [(f, spec, conv) for _, f, spec, conv in parsed if f is not None]
        if not fields:
            if names:
                templates[key] = value  # `{{` and `}}`: literal braces, kept as written
            continue
        bad = False
        for field, spec, conv in fields:
            plain = field.isidentifier() and not spec and not conv
            if not names and not plain:
                continue  # `{"a": 1}` in a row without vars is text, not a template
            if not plain:
                msg = f"placeholder {{{field}}} is not a plain {{name}} of a var"
            elif field not in names:
                which = "this row has no vars" if not names else f"vars: {', '.join(names)}"
                msg = f"placeholder {{{field}}} has no var of that name ({which})"
            else:
                continue
            problems.append(BadMeta(key, msg))
            bad = True
        if not bad:
            templates[key] = value
    return templates, problems


def fill_meta(
    meta: tuple[tuple[str, MetaValue], ...], templates: dict[str, str], values: dict[str, str]
) -> tuple[tuple[str, MetaValue], ...]:
    """One job's metadata: each template filled with the job's var values."""
    return tuple(
        (k, templates[k].format_map(values) if k in templates else v) for k, v in meta
    )
