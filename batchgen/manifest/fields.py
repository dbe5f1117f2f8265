"""Field rules for :mod:`batchgen.manifest`: parsing job fields, ids, matrix templates, YAML lines.

Kept apart from the readers so each file stays readable; nothing here touches the disk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from batchgen.errors import Problem
from batchgen.manifest import extras, hints
from batchgen.manifest.base import Bad, BadMeta, kind_of, parse_bool, string_of
from batchgen.spec import ASPECT_RATIOS, IMAGE_SIZES, MAX_REFERENCE_IMAGES, MetaValue, safe_id
from batchgen.spec import CONTROL as ASCII_CONTROL

JOB_FIELDS = (
    "id",
    "prompt",
    "images",
    "aspect_ratio",
    "image_size",
    "count",
    "output_text",
    "temperature",
    "seed",
    "model",
    "vars",
    "meta",
    "edit_of",
    *extras.EXTRA_FIELDS,
)
MANIFEST_KEYS = ("model", "provider", "base_url", "defaults", "jobs")
MAX_SLUG_LENGTH = 40
# gemini-3-pro-image takes 65,536 input tokens (shared/gemini-api.md); Google's docs count a
# token as about 4 characters, so a longer prompt cannot fit whatever else the request holds.
INPUT_TOKEN_LIMIT = 65_536
CHARS_PER_TOKEN = 4
MAX_PROMPT_CHARS = INPUT_TOKEN_LIMIT * CHARS_PER_TOKEN
# One JSONL line or CSV line: a prompt at the cap written as \u escapes (6 bytes a character,
# 1.5 MiB), with its metadata and 14 reference paths, fits with room; a line past it is read in
# pieces and reported, never held whole (a 400 MB line took 1.7 GB).
MAX_LINE_BYTES = 4 << 20
# A NUL in a prompt is a binary file or a broken export, not words (and C strings end at it).
# Other control characters stay allowed: str.split() treats some as spaces, and prompts have
# carried them.
CONTROL_CHARS = re.compile("\x00")
# Far above any real dataset; a typo (100000000 for 10) would otherwise hash ids for minutes.
MAX_COUNT = 100_000
# Jobs one manifest row may expand to (vars combinations times count).
MAX_ROW_JOBS = 1_000_000
# The API's `seed` is an int32.
SEED_MIN, SEED_MAX = -(2**31), 2**31 - 1
# CSV columns named `meta.<key>` carry the user's metadata (a `meta:` mapping in YAML and JSONL).
META_PREFIX = "meta."
# Metadata is written as JSON (ledger, sidecars, exports): integers must fit in 64 bits.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MAX_META_KEY = 100


class Row:
    """One CSV row, JSONL line or YAML job (with defaults merged), before any checking.

    A plain slots class, not a dataclass: one is made per row of a million-row manifest, and the
    generated frozen ``__init__`` was a measurable share of the time per row.
    """

    __slots__ = ("fields", "line", "lines", "text")

    def __init__(self, line: int, fields: dict[str, Any], lines: Mapping[str, int], text: bool):
        self.line = line
        self.fields = fields
        self.lines = lines  # YAML: the line of each key; CSV and JSONL: empty
        self.text = text  # CSV: every value is a string to be parsed

    def __repr__(self) -> str:
        return f"Row(line={self.line!r}, fields={self.fields!r}, text={self.text!r})"

    def line_of(self, field: str) -> int:
        return self.lines.get(field, self.line)


# -- single fields ----------------------------------------------------------------------------


def parse_id(value: object, text: bool) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `id: 12` in YAML is meant as a name
    raw = string_of(value).strip()
    sanitise_id(raw)
    return raw


def sanitise_id(raw: str) -> str:
    """The file-name-safe form of a user id; refuses ids that could mean another path."""
    try:
        return safe_id(raw)
    except ValueError as exc:
        raise Bad(str(exc)) from None


def parse_edit_of(value: object, text: bool) -> str:
    """``edit_of: ID``: the user's id of the job this one continues (``{var}`` allowed)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    raw = string_of(value).strip().removeprefix("@")
    if not raw:
        raise Bad("must name the id of another job")
    return raw


def parse_prompt(value: object, text: bool) -> str:
    prompt = string_of(value).strip()
    if not prompt:
        raise Bad("must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise Bad(
            f"{len(prompt):,} characters, over the {MAX_PROMPT_CHARS:,} that fit in the model's "
            f"{INPUT_TOKEN_LIMIT:,}-token input (about {CHARS_PER_TOKEN} characters a token)"
        )
    bad = CONTROL_CHARS.search(prompt)
    if bad is not None:
        raise Bad(
            f"contains the control character U+{ord(bad.group()):04X} at character "
            f"{bad.start() + 1}: not text a prompt holds (a file saved in the wrong format?)"
        )
    return prompt


def parse_images(value: object, text: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = list(value.split(";")) if text else [value]
    elif isinstance(value, list):
        items = value
    else:
        raise Bad(f"must be a path or URL, or a list of them, not {kind_of(value)}")
    out: list[str] = []
    for item in items:
        source = string_of(item).strip()
        if source:
            out.append(source)
        elif not text:
            raise Bad("contains an empty path")
    if len(out) > MAX_REFERENCE_IMAGES:
        raise Bad(f"{len(out)} reference images; at most {MAX_REFERENCE_IMAGES} per job")
    return tuple(out)


def parse_aspect_ratio(value: object, text: bool) -> str:
    ratio = string_of(value).strip()
    if ratio not in ASPECT_RATIOS:
        meant = hints.ratio_meant(ratio)
        hint = f"; did you mean {meant}?" if meant else ""
        if meant and ratio.count(":") == 2:
            hint += " (a spreadsheet read it as a time: format the column as text)"
        raise Bad(f"{ratio!r} is not one of {', '.join(ASPECT_RATIOS)}{hint}")
    return ratio


def parse_image_size(value: object, text: bool) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # YAML `image_size: 1024`: the same message as the CSV cell gets
    shown = string_of(value).strip()
    size = shown.upper()  # the API rejects '1k'; users write it anyway
    if size not in IMAGE_SIZES:
        meant = hints.size_meant(shown)
        hint = f"; did you mean {meant}?" if meant else ""
        raise Bad(f"{shown!r} is not one of {', '.join(IMAGE_SIZES)}{hint}")
    return size


_INT_TEXT = re.compile(r"[+-]?\d+")
_FLOAT_INT_TEXT = re.compile(r"[+-]?\d+\.0*")


# Longer than any limit below; Python refuses to convert past 4300 digits anyway.
_MAX_INT_DIGITS = 30


def _integer(value: object, text: bool) -> int:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e30:
        return int(value)  # `count: 2.0`, as spreadsheets and JSON writers produce
    if text and isinstance(value, str) and _FLOAT_INT_TEXT.fullmatch(value.strip()):
        value = value.strip().split(".")[0]
    if text and isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        if len(value.strip().lstrip("+-")) > _MAX_INT_DIGITS:
            raise Bad(f"{value.strip()[:12]}... has far too many digits")
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    shown = text or (isinstance(value, float) and math.isfinite(value))
    raise Bad(f"must be a whole number, not {repr(value) if shown else kind_of(value)}")


def _shown(number: int) -> str:
    text = str(number)
    return text if len(text) <= 30 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


def parse_count(value: object, text: bool) -> int:
    count = _integer(value, text)
    if count < 1:
        raise Bad(f"must be at least 1, not {_shown(count)}")
    if count > MAX_COUNT:
        raise Bad(f"must be at most {MAX_COUNT:,}, not {_shown(count)}")
    return count


def parse_seed(value: object, text: bool) -> int:
    seed = _integer(value, text)
    if not SEED_MIN <= seed <= SEED_MAX:
        raise Bad(f"must be between {SEED_MIN} and {SEED_MAX} (32-bit), not {_shown(seed)}")
    return seed


def parse_output_text(value: object, text: bool) -> bool:
    return parse_bool(value, text)


def parse_temperature(value: object, text: bool) -> float:
    number: float
    if text and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise Bad(f"must be a number, not {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise Bad(f"must be a number, not {kind_of(value)}")
    if not math.isfinite(number) or not 0.0 <= number <= 2.0:
        raise Bad(f"must be between 0 and 2, not {value!r}")
    return number


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_model(value: object, text: bool) -> str:
    model = string_of(value).strip()
    if not _MODEL_NAME.fullmatch(model):
        # The name goes into the request URL path; '/', '?' or spaces would change the request.
        raise Bad(f"{model!r} is not a model name (letters, digits, '.', '_', '-')")
    return model


def parse_vars(value: object, text: bool) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if text and isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            example = '{"animal": ["cat", "dog"]}'
            raise Bad(f"must be a JSON object in a CSV cell, e.g. {example}") from None
    if not isinstance(value, dict) or not value:
        raise Bad("must be a mapping of names to lists of values")
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, raw in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise Bad(f"{name!r} is not a usable name (letters, digits and '_')")
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise Bad(f"{name}: has no values")
        values: dict[str, None] = {}  # ordered, and a set: a long list stays linear
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise Bad(f"{name}: values must be strings or numbers, not {kind_of(item)}")
            if str(item) in values:
                raise Bad(f"{name}: {str(item)!r} is listed twice")
            values[str(item)] = None
        out.append((name, tuple(values)))
    return tuple(out)


# Metadata names already checked: a CSV's meta columns name the same keys on every row.
_GOOD_META_KEYS: set[str] = set()


def parse_meta(value: object, text: bool) -> tuple[tuple[str, MetaValue], ...]:
    """The user's metadata: a flat mapping of names to strings, numbers, booleans or null.

    Flat because every output format has a column per key (a nested value has no column).
    CSV cells are kept as text, stripped: a SKU of ``00123`` stays ``00123``.
    """
    if not isinstance(value, dict):
        raise Bad(f"must be a mapping of names to values, not {kind_of(value)}")
    out: list[tuple[str, MetaValue]] = []
    good = _GOOD_META_KEYS
    for key, item in value.items():
        if key not in good:
            if not isinstance(key, str) or not key.strip():
                raise Bad("has an empty name")
            if len(key) > MAX_META_KEY or ASCII_CONTROL.search(key):
                raise BadMeta(key, f"names must be at most {MAX_META_KEY} printable characters")
            if len(good) < 4096:
                good.add(key)
        if text and isinstance(item, str):
            item = item.strip()
        elif item is None or isinstance(item, (str, bool)):
            pass
        elif isinstance(item, int):
            if not _INT64_MIN <= item <= _INT64_MAX:
                raise BadMeta(key, f"{_shown(item)} does not fit in 64 bits; quote it as text")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadMeta(key, f"must be a finite number, not {item!r}")
        else:
            msg = f"must be a string, number, true/false or null, not {kind_of(item)}"
            if not isinstance(item, (list, tuple, dict)):
                msg += "; quote it to keep it as text"  # YAML reads 2024-01-31 as a date
            raise BadMeta(key, msg)
        out.append((key, item))
    return tuple(out)


def row_jobs(matrix: tuple[tuple[str, tuple[str, ...]], ...], count: int) -> int:
    """How many jobs a row expands to: the product of the vars' lengths, times count."""
    return math.prod(len(v) for _, v in matrix) * count


PARSERS: dict[str, Callable[[object, bool], Any]] = {
    "id": parse_id,
    "prompt": parse_prompt,
    "images": parse_images,
    "aspect_ratio": parse_aspect_ratio,
    "image_size": parse_image_size,
    "count": parse_count,
    "output_text": parse_output_text,
    "temperature": parse_temperature,
    "seed": parse_seed,
    "model": parse_model,
    "vars": parse_vars,
    "meta": parse_meta,
    "edit_of": parse_edit_of,
    "system_instruction": extras.parse_system_instruction,
    "safety_settings": extras.parse_safety_settings,
    "google_search": extras.parse_google_search,
}


def unknown_field(key: str) -> str:
    """The message for a field that is none of the job fields, with its likely meaning."""
    meant = hints.close_match(key, JOB_FIELDS)
    if meant:
        return f"unknown field; did you mean {meant}? {unknown_field_message()[14:]}"
    return unknown_field_message()


def parse_row(row: Row, fmt: str, name: str, problems: list[Problem]) -> dict[str, Any]:
    """The row's fields parsed and normalised; every problem is appended, none raised."""
    values: dict[str, Any] = {}
    for key, raw in row.fields.items():
        parser = PARSERS.get(key)
        if parser is None:
            if key in MANIFEST_KEYS and fmt != "yaml":
                msg = "is a manifest-level setting; give it on the command line"
            elif key in MANIFEST_KEYS:
                msg = "is a manifest-level setting; put it at the top of the file"
            else:
                msg = unknown_field(str(key))
            problems.append(Problem(name, row.line_of(str(key)), str(key), msg))
            continue
        if raw is None:
            continue  # YAML `seed:` or JSON null: not set, like an empty CSV cell
        try:
            values[key] = parser(raw, row.text)
        except BadMeta as exc:
            # A YAML mapping knows the line of each of its keys: point at the bad one.
            key_lines: Mapping[str, int] = getattr(raw, "key_lines", {})
            line = key_lines.get(exc.key, row.line_of(key))
            problems.append(Problem(name, line, f"meta.{exc.key}", str(exc)))
        except Bad as exc:
            problems.append(Problem(name, row.line_of(key), key, str(exc)))
    if row.fields.get("prompt") is None:
        problems.append(Problem(name, row.line, "prompt", "required"))
    return values


def unknown_field_message() -> str:
    return f"unknown field (known: {', '.join(JOB_FIELDS)}); your own fields go under meta:"
