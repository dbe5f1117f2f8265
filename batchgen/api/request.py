"""The generateContent body of one job, as Google's Gemini API reference names its fields.

- ``systemInstruction``: a Content object ``{"parts": [{"text": ...}]}`` at the top level (a
  list there is a 400);
- ``safetySettings``: ``[{"category": HARM_CATEGORY_..., "threshold": BLOCK_...}]`` at the top
  level, not in ``generationConfig`` (the service answers 400 to that);
- ``tools: [{"google_search": {}}]``: Search grounding, as every REST example writes it.

Each is sent only when the job sets it, so a request that sets none is what it always was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..catalog import builtin_table
from ..spec import JobSpec, Reference, Turn


def sends_image_size(model: str) -> bool:
    info = builtin_table().get(model)
    if info is None:  # a model from --prices: only the 2.5 Flash family is known to refuse it
        return not model.startswith("gemini-2.5-flash")
    return info.sends_image_size


def request_body(
    spec: JobSpec, parts: list[dict[str, Any]], history: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The whole request: the user's turn (``parts``: prompt, then references) and settings;
    after ``history``, the earlier turns of a conversation (an ``edit_of`` chain), if any."""
    image_config: dict[str, Any] = {}
    if spec.aspect_ratio:
        image_config["aspectRatio"] = spec.aspect_ratio
    if sends_image_size(spec.model):
        image_config["imageSize"] = spec.image_size
    gen: dict[str, Any] = {
        "responseModalities": ["TEXT", "IMAGE"] if spec.output_text else ["IMAGE"],
    }
    if image_config:
        gen["imageConfig"] = image_config
    if spec.temperature is not None:
        gen["temperature"] = spec.temperature
    if spec.seed is not None:
        gen["seed"] = spec.seed
    body: dict[str, Any] = {"contents": [*(history or ()), {"role": "user", "parts": parts}]}
    extras = spec.extras
    if extras is not None:
        if extras.system_instruction is not None:
            body["systemInstruction"] = {"parts": [{"text": extras.system_instruction}]}
        if extras.safety_settings:
            body["safetySettings"] = [
                {"category": c, "threshold": t} for c, t in extras.safety_settings
            ]
        if extras.google_search:
            body["tools"] = [{"google_search": {}}]
    body["generationConfig"] = gen
    return body


async def turn_body(turn: Turn,
                    image_part: Callable[[Reference], Awaitable[dict[str, Any]]]
                    ) -> dict[str, Any]:
    """An earlier turn of a conversation as ``contents`` holds it: texts and images, each
    ``thoughtSignature`` exactly as received. ``image_part`` says how an image travels (inline
    bytes live, an uploaded file in a batch's request line)."""
    parts: list[dict[str, Any]] = []
    for part in turn.parts:
        out: dict[str, Any] = (await image_part(part.image) if part.image is not None
                               else {"text": part.text or ""})
        if part.thought:
            out["thought"] = True
        if part.signature is not None:
            out["thoughtSignature"] = part.signature
        parts.append(out)
    return {"role": turn.role, "parts": parts}
