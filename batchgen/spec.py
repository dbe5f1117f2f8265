"""What one job is: the frozen specs every stage passes along, and the service's fixed vocabulary.

The constants follow ``shared/gemini-api.md``; the fake server and the manifest validator both
read them from here so the two can never disagree about what the service accepts.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

DEFAULT_MODEL = "gemini-3-pro-image"

# A user's `id` (sanitised) is at most this long; a job id adds a sample number and a digest.
MAX_ID_LENGTH = 100
MAX_JOB_ID_LENGTH = MAX_ID_LENGTH + 32
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# What :func:`safe_id` leaves unchanged, as one expression: the fast check of a million ledger
# lines (``job_id_problem`` says why one fails).
JOB_ID_FORM = re.compile(rf"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_JOB_ID_LENGTH - 1}}}")
# The same form, any length: what safe_id returns unchanged when it fits its limit.
_SAFE_FORM = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9._-]*")
# ASCII control characters (and DEL): never in an id or a metadata key.
CONTROL = re.compile("[\x00-\x1f\x7f]")


def safe_id(raw: str, limit: int = MAX_ID_LENGTH) -> str:
    """The file-name-safe form of an id; ValueError for one that could mean another path.

    The one rule for every id that names a file: a manifest's ``id`` goes through it, and a job
    id read back from a run folder (ledger, ``jobs.jsonl``, a batch's job list, a merged shard)
    must come out of it unchanged (:func:`job_id_problem`).
    """
    if len(raw) <= limit and _SAFE_FORM.fullmatch(raw):
        return raw  # already in the safe form (every id a million-row manifest names, mostly)
    if not raw:
        raise ValueError("must not be empty")
    if ".." in raw or raw.startswith("."):
        raise ValueError(
            f"{raw!r} contains '..' or starts with '.'; ids name files in the run folder")
    if "/" in raw or "\\" in raw:
        raise ValueError(
            f"{raw!r} contains a path separator; ids name files inside the run folder")
    if CONTROL.search(raw):
        raise ValueError(f"{raw!r} contains control characters")
    safe = _ID_UNSAFE.sub("-", raw).lstrip("-.")
    if not safe:
        raise ValueError(f"{raw!r} has no usable characters (letters, digits, '.', '_', '-')")
    if len(safe) > limit:
        raise ValueError(f"longer than {limit} characters")
    return safe


def job_id_problem(job_id: object) -> str | None:
    """Why a job id read from a file may not name files in a run folder or a dataset; None if
    it may: every id batchgen makes is already in :func:`safe_id`'s form."""
    if not isinstance(job_id, str):
        return f"{job_id!r} is not a string"
    if JOB_ID_FORM.fullmatch(job_id):
        return None
    try:
        safe = safe_id(job_id, MAX_JOB_ID_LENGTH)
    except ValueError as exc:
        return str(exc)
    return None if safe == job_id else f"{job_id!r} has characters a job id never has"


# Every ratio and size any model offers; which model offers which is data/models.json's
# (batchgen/catalog.py). The Flash image models add the tall and wide ratios and 512.
ASPECT_RATIOS = (
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
    "1:4", "4:1", "1:8", "8:1",
)  # fmt: skip
# The output's ratio when the request names none and has no reference image.
DEFAULT_ASPECT_RATIO = "1:1"
IMAGE_SIZES = ("512", "1K", "2K", "4K")
DEFAULT_IMAGE_SIZE = "1K"
MAX_REFERENCE_IMAGES = 14
# Synchronous service tiers (shared/gemini-api.md "Service tiers"); the body's service_tier.
SERVICE_TIERS = ("standard", "flex", "priority")
SERVICE_TIER_ENUM = "type.googleapis.com/google.ai.generativelanguage.v1beta.ServiceTier"


def tier_name(value: object) -> str | None:
    """A ``service_tier`` value read as the service reads it: the docs write both "flex" and
    "FLEX", so case is ignored. ValueError for anything else."""
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in SERVICE_TIERS:
        raise ValueError(repr(value))
    return value.lower()
INPUT_MIME_TYPES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")

# gemini-3-pro-image output at 1K; 2K doubles and 4K quadruples each side.
BASE_PIXELS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
    # gemini-3.1-flash-image only (1:4 at 1K is 512x2048, 8:1 at 4K 12288x1536).
    "1:4": (512, 2048),
    "4:1": (2048, 512),
    "1:8": (384, 3072),
    "8:1": (3072, 384),
}
SIZE_SCALE = {"512": 0.5, "1K": 1, "2K": 2, "4K": 4}

# Safety settings as Google's Gemini API documents them (ai.google.dev/api/generate-content,
# "Harm categories ... are supported"; the safety guide's four adjustable filters). The
# HARM_CATEGORY_IMAGE_* values of the SDK are "not supported in Gemini API"; CIVIC_INTEGRITY is
# deprecated ("Election filter is not longer supported").
HARM_CATEGORIES = (
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)
DEPRECATED_HARM_CATEGORIES = ("HARM_CATEGORY_CIVIC_INTEGRITY",)
HARM_THRESHOLDS = (
    "BLOCK_LOW_AND_ABOVE", "BLOCK_MEDIUM_AND_ABOVE", "BLOCK_ONLY_HIGH", "BLOCK_NONE", "OFF",
)  # fmt: skip


def output_pixels(aspect_ratio: str, image_size: str) -> tuple[int, int]:
    w, h = BASE_PIXELS[aspect_ratio]
    s = SIZE_SCALE[image_size]
    return int(w * s), int(h * s)


def nearest_aspect_ratio(width: int, height: int) -> str:
    """The supported aspect ratio closest to ``width`` x ``height`` (compared on a log scale)."""
    if width <= 0 or height <= 0:
        return "1:1"
    target = math.log(width / height)

    def error(ratio: str) -> float:
        w, h = BASE_PIXELS[ratio]
        return abs(math.log(w / h) - target)

    return min(ASPECT_RATIOS, key=error)


class Provider(str, enum.Enum):
    ANYFAST = "anyfast"
    GOOGLE = "google"


@dataclass(frozen=True, slots=True)
class Reference:
    """A reference image as the manifest named it.

    Bytes are not held here: a million-row manifest that reuses one photo must not keep a million
    copies in memory. ``sha256`` pins the content that went into the job id.
    """

    source: str
    path: Path | None = None
    url: str | None = None
    sha256: str = ""
    mime_type: str = ""
    size_bytes: int = 0
    # ``@ID`` in ``images:``: the job id of the job whose image this is (issue 22, chains);
    # ``path`` and ``sha256`` are that image's once the parent has one.
    parent: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestExtras:
    """The request fields most jobs leave out: each is sent, and hashed into the job id, only
    when set, so the ids of jobs that set none are what they always were."""

    system_instruction: str | None = None
    # (category, threshold) pairs, in manifest order: sent as ``safetySettings``.
    safety_settings: tuple[tuple[str, str], ...] = ()
    google_search: bool = False  # the Search grounding tool


# How deep a chain may go (edit of an edit of ...): each edit sends every earlier turn again, so
# the request grows with the depth; ten turns of 1K images stay well inside the 20 MB limit.
MAX_CHAIN_DEPTH = 10


@dataclass(frozen=True, slots=True)
class TurnPart:
    """One part of an earlier turn of a conversation: text, or an image (as a reference to load),
    with the ``thoughtSignature`` the answer carried, sent back exactly as received."""

    text: str | None = None
    image: Reference | None = None
    signature: str | None = None
    thought: bool = False


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "user" | "model"
    parts: tuple[TurnPart, ...]


@dataclass(frozen=True, slots=True)
class Chain:
    """How a job hangs on other jobs of its manifest (``@ID`` references, ``edit_of``).

    Read from the manifest, ``edit_of`` is the user's id; once the manifest's chains are
    resolved (:mod:`batchgen.manifest.chains`) every id here is a job id. ``history`` is filled
    only when the job is about to be sent: the conversation's earlier turns.
    """

    edit_of: str | None = None
    parents: tuple[str, ...] = ()  # every job id this one needs, edit_of first
    group: str = ""  # the first job of its chain: --shard keeps a chain on one machine
    depth: int = 0
    history: tuple[Turn, ...] = ()
    # Filled with ``history``: (parent job id, sha256 of the parent image used), per parent.
    made_from: tuple[tuple[str, str], ...] = ()


# A metadata value: the user's own label for a job, carried to every output, never sent.
MetaValue: TypeAlias = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One request to the model: one job, one image, one ledger line."""

    job_id: str
    prompt: str
    model: str = DEFAULT_MODEL
    references: tuple[Reference, ...] = ()
    aspect_ratio: str | None = None
    image_size: str = DEFAULT_IMAGE_SIZE
    output_text: bool = False
    temperature: float | None = None
    seed: int | None = None
    sample: int = 0
    user_id: str | None = None
    # Where the job came from, for error messages and the report.
    source_file: str = ""
    source_line: int = 0
    vars: tuple[tuple[str, str], ...] = field(default=())
    # The user's metadata (``meta:``), in manifest order. Not sent and not in the job id: editing
    # a label re-runs nothing. Pairs, not a dict, so the spec stays hashable.
    meta: tuple[tuple[str, MetaValue], ...] = ()
    extras: RequestExtras | None = None
    chain: Chain | None = None

    @property
    def name(self) -> str | None:
        """The user's ``id`` for the job, as written (the job id only starts with it)."""
        return self.user_id

    @property
    def source(self) -> str:
        """Where the job was written: ``manifest-path:line``."""
        return f"{self.source_file}:{self.source_line}" if self.source_line else self.source_file
