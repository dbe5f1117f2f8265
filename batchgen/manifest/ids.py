"""The readable part of job ids (the prompt's first words, matrix values) and matrix templates.

Called for every job of a million-row manifest, so the slugs are made with a byte table rather
than a regular expression.
"""

from __future__ import annotations

import string
import unicodedata

from batchgen.manifest.fields import MAX_SLUG_LENGTH
from batchgen.spec import MAX_ID_LENGTH


def check_template(template: str, names: list[str]) -> list[str]:
    """Problems with a matrix prompt: placeholders without a var, vars without a placeholder."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [f"{exc} (write {{{{ and }}}} for literal braces)"]
    used: list[str] = []
    problems: list[str] = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            problems.append(f"placeholder {{{field}}} is not a plain {{name}} of a var")
        elif field not in names:
            problems.append(f"placeholder {{{field}}} has no var of that name")
        else:
            used.append(field)
    problems.extend(f"var {n!r} is not used in the prompt" for n in names if n not in used)
    return problems


# ASCII letters lower-cased, digits kept, every other byte a space: after ``split()`` the runs of
# letters and digits joined by '-' are what ``re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")``
# gives, at a third of the cost (a slug is made for every job of a million-row manifest).
_SLUG_TABLE = bytes(
    (c | 0x20) if chr(c).isascii() and chr(c).isalpha() else c if 0x30 <= c <= 0x39 else 0x20
    for c in range(256)
)


def slug(text: str, limit: int = MAX_SLUG_LENGTH) -> str:
    if text.isascii():
        raw = text.encode("ascii")
    else:
        raw = unicodedata.normalize("NFKD", text).encode("ascii", "ignore")
    return b"-".join(raw.translate(_SLUG_TABLE).split())[:limit].rstrip(b"-").decode("ascii")


def job_prefix(id_prefix: str, combo: tuple[str, ...], prompt: str) -> str:
    """The readable part of a job id: user id and matrix values, else the prompt's first words."""
    if not id_prefix and not combo:
        return prompt_slug(prompt)
    parts = [id_prefix] if id_prefix else []
    parts.extend(s for s in map(slug, combo) if s)
    if parts:
        return "-".join(parts)[:MAX_ID_LENGTH].rstrip("-.")
    return prompt_slug(prompt)


def prompt_slug(prompt: str) -> str:
    """The readable part of a job id with no user id or matrix values: the prompt's first words.

    ``slug(" ".join(prompt.split(None, 6)[:6])) or "job"``, written out: it runs for every row.
    """
    text = " ".join(prompt.split(None, 6)[:6])
    if text.isascii():
        raw = text.encode("ascii")
    else:
        raw = unicodedata.normalize("NFKD", text).encode("ascii", "ignore")
    words = raw.translate(_SLUG_TABLE).split()
    return b"-".join(words)[:MAX_SLUG_LENGTH].rstrip(b"-").decode("ascii") or "job"
