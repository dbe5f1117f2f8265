"""Reading a generateContent answer: pure functions, no I/O.

The service's answers vary more than its docs admit: camelCase or snake_case, thought parts with
interim images, JPEG bytes labelled PNG, and on reseller URL groups the image as a ``fileData``
URI or as a URL inside a text part. Everything here turns one answer into a :class:`Parsed`, or
raises the permanent error that says why there is no image.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import BadResponseError, BlockedError, EmptyAnswerError, NoImageError

_fast_b64decode: Callable[..., bytes] | None
try:
    from pybase64 import b64decode as _fast_b64decode
except ImportError:  # the stdlib decodes it all, only slower
    _fast_b64decode = None

SAFETY_FINISH = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)

_MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?\s*\)")
_BARE_URL = re.compile(r"(https?://[^\s<>\"')\]]+|data:image/[a-zA-Z+.-]+;base64,[A-Za-z0-9+/=\s]+)")
_TRAILING = ".,;:!?'\""


def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
    v = d.get(camel)
    return d.get(snake) if v is None else v


@dataclass(frozen=True, slots=True)
class Parsed:
    """An answer that carries an image, inline (``data``) or by reference (``url``)."""

    data: bytes | None
    url: str | None
    text: str | None
    usage: dict[str, Any] | None
    dropped_thought_images: int
    grounding: Any = None  # the candidate's groundingMetadata (Search grounding), as sent
    # The model turn a conversation sends back (:func:`model_turn`).
    turn: tuple[dict[str, Any], ...] = ()


def decode_b64(data: str) -> bytes:
    """The bytes of a base64 image. Strict SIMD decoding first (pybase64: a 1 MB image in
    0.25 ms); text it refuses (line breaks, a missing pad) goes through the stdlib's lenient
    decoder, which also decodes everything when pybase64 is not installed."""
    if _fast_b64decode is not None:
        try:
            return _fast_b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            pass
    try:
        # a2b_base64 takes the str as it is; b64decode would first copy megabytes into bytes.
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError) as exc:
        raise BadResponseError(f"image data is not valid base64: {exc}") from exc


def find_image_url(text: str) -> str | None:
    """The last image URL in a text part: markdown ``![..](url)``, a bare URL or a data: URL."""
    text = text.replace("\\u0026", "&").replace("\\/", "/")
    found = [m.group(1) for m in _MARKDOWN_IMAGE.finditer(text)]
    if not found:
        found = [m.group(1) for m in _BARE_URL.finditer(text)]
    if not found:
        return None
    return found[-1].strip().rstrip(_TRAILING)


def data_url_bytes(url: str) -> tuple[bytes, str]:
    header, _, payload = url.partition(",")
    mime = header[5:].split(";", 1)[0] or "application/octet-stream"
    return decode_b64(re.sub(r"\s+", "", payload)), mime


def parse_answer(obj: Any) -> Parsed:
    """Raise BlockedError / NoImageError when the answer has no image; else the final image."""
    if not isinstance(obj, dict):
        raise BadResponseError("the answer is not a JSON object")
    usage = _get(obj, "usageMetadata", "usage_metadata")
    usage = usage if isinstance(usage, dict) else None
    feedback = _get(obj, "promptFeedback", "prompt_feedback") or {}
    candidates = obj.get("candidates") or []
    if not candidates:
        reason = None
        if isinstance(feedback, dict):
            reason = _get(feedback, "blockReason", "block_reason")
        if reason:
            raise BlockedError(f"prompt blocked: {reason}", usage=usage)
        # No candidates and no reason: a glitch of the service, worth another attempt.
        raise EmptyAnswerError("the answer has no candidates and no block reason", usage=usage)
    cand = candidates[0] if isinstance(candidates[0], dict) else {}
    finish = str(_get(cand, "finishReason", "finish_reason") or "")
    content = cand.get("content") or {}
    parts = content.get("parts") or [] if isinstance(content, dict) else []

    b64: str | None = None  # the last final image, decoded once after the loop
    url: str | None = None
    texts: list[str] = []
    dropped = 0
    for part in parts:
        if not isinstance(part, dict):
            continue
        inline = _get(part, "inlineData", "inline_data")
        file_data = _get(part, "fileData", "file_data")
        if part.get("thought"):
            # Interim images are not billed and are not the result.
            if inline or file_data:
                dropped += 1
            continue
        if isinstance(inline, dict) and inline.get("data"):
            # Keep only the last: decoding every final image would copy megabytes for nothing.
            b64, url = str(inline["data"]), None
        elif isinstance(file_data, dict) and _get(file_data, "fileUri", "file_uri"):
            b64, url = None, str(_get(file_data, "fileUri", "file_uri"))
        elif isinstance(part.get("text"), str):
            text = part["text"]
            texts.append(text)
            found = find_image_url(text)
            if found:
                b64, url = None, found

    text_out = "\n".join(t for t in texts if t.strip()) or None
    if b64 is None and url is None:
        if finish in SAFETY_FINISH:
            raise BlockedError(f"finishReason {finish}", usage=usage)
        if finish and finish != "STOP":
            raise NoImageError(f"finishReason {finish}", usage=usage)
        snippet = (text_out or "")[:160].replace("\n", " ")
        why = f"the model answered in text only: {snippet!r}" if snippet else "no image"
        raise NoImageError(why, usage=usage)
    return Parsed(
        data=None if b64 is None else decode_b64(b64),
        url=url,
        text=text_out,
        usage=usage,
        dropped_thought_images=dropped,
        grounding=_get(cand, "groundingMetadata", "grounding_metadata"),
        turn=model_turn(parts),
    )


def model_turn(parts: list[Any]) -> tuple[dict[str, Any], ...]:
    """The answer's parts as the next turn of a conversation sends them back (issue 22).

    Every part that carries a ``thoughtSignature`` is kept with it, exactly as received, and
    every final (non-thought) part; thought parts without one (the reasoning text, interim
    images: not billed, not the result) are left out, as Google's multi-turn editing example
    leaves them. Images become ``{"image": true}``: the saved file takes their place, and only
    the last, the image batchgen keeps, stays.
    """
    out: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        sig = _get(part, "thoughtSignature", "thought_signature")
        thought = bool(part.get("thought"))
        if thought and not isinstance(sig, str):
            continue
        kept: dict[str, Any] = {}
        if _get(part, "inlineData", "inline_data") or _get(part, "fileData", "file_data"):
            out = [p for p in out if not p.get("image")]
            kept["image"] = True
        elif isinstance(part.get("text"), str):
            kept["text"] = part["text"]
        else:
            continue
        if thought:
            kept["thought"] = True
        if isinstance(sig, str):
            kept["thoughtSignature"] = sig
        out.append(kept)
    return tuple(out)
