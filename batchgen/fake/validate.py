"""Reading a generateContent request the way the service does, with the service's 400s.

Field names are accepted in snake_case and camelCase, like the service's protobuf JSON parser;
unknown names are rejected the same way too (``safetySettings`` inside ``generationConfig`` is a
real mistake the service answers with 400, and the fake should catch it just as early).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchgen import spec
from batchgen.catalog import builtin_table
from batchgen.spec import SERVICE_TIER_ENUM, tier_name

from .images import nearest_ratio, probe_image

_CAMEL = re.compile(r"(?<!^)([A-Z])")

_TOP_FIELDS = frozenset({
    "contents", "tools", "tool_config", "safety_settings", "system_instruction",
    "generation_config", "cached_content", "model", "service_tier",
})  # fmt: skip
_CONTENT_FIELDS = frozenset({"role", "parts"})
_PART_FIELDS = frozenset(
    {
        "text",
        "inline_data",
        "file_data",
        "function_call",
        "function_response",
        "executable_code",
        "code_execution_result",
        "thought",
        "thought_signature",
        "video_metadata",
        "part_metadata",
        "media_resolution",
    }
)
_BLOB_FIELDS = frozenset({"mime_type", "data"})
_FILE_DATA_FIELDS = frozenset({"mime_type", "file_uri"})
_GEN_FIELDS = frozenset(
    {
        "stop_sequences",
        "response_mime_type",
        "response_schema",
        "response_json_schema",
        "response_modalities",
        "candidate_count",
        "max_output_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_logprobs",
        "logprobs",
        "enable_enhanced_civic_answers",
        "speech_config",
        "thinking_config",
        "image_config",
        "media_resolution",
    }
)
_SAFETY_FIELDS = frozenset({"category", "threshold", "method"})
_TOOL_FIELDS = frozenset(
    {"google_search", "google_search_retrieval", "code_execution", "url_context",
     "function_declarations"}
)  # fmt: skip
_CATEGORIES = frozenset(
    {"HARM_CATEGORY_UNSPECIFIED", *spec.HARM_CATEGORIES, *spec.DEPRECATED_HARM_CATEGORIES}
)
_THRESHOLDS = frozenset({"HARM_BLOCK_THRESHOLD_UNSPECIFIED", *spec.HARM_THRESHOLDS})
_ENUM = "type.googleapis.com/google.ai.generativelanguage.v1beta."
_IMAGE_CONFIG_FIELDS = frozenset({"aspect_ratio", "image_size", "person_generation"})
_MODALITIES = frozenset({"TEXT", "IMAGE"})
# Pillow can open these; HEIC/HEIF need a plugin the service has and we don't, so they pass.
_PROBED_MIME = frozenset({"image/png", "image/jpeg", "image/webp"})

TROUBLESHOOT = "https://developers.generativeai.google/guide/troubleshooting"

# Looks up a fileData URI: the image's (width, height), or None when it is not one we can see.
FileResolver = Callable[[str], "tuple[int, int] | None"]


class ApiError(Exception):
    """An answer in the service's error format, raised anywhere in request handling."""

    def __init__(
        self,
        code: int,
        status: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "code": self.code,
                    "message": self.message,
                    "status": self.status,
                    "details": self.details,
                }
            }
        )


class SchemaError(ApiError):
    """The body does not fit the request's schema (not an object, an unknown field name).

    The Batch API checks exactly this when a batch is created; everything else about a line
    (a bad ratio, a broken image) only shows when the line runs, as that line's error.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(400, "INVALID_ARGUMENT", message)
        self.field = field


def invalid(message: str, details: list[dict[str, Any]] | None = None) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message, details)


@functools.lru_cache(maxsize=1024)
def snake(name: str) -> str:
    # Cached: the same few dozen field names come in every request, and batch files hold
    # 100,000s of requests, where the regex was the biggest cost of reading one.
    return _CAMEL.sub(r"_\1", name).lower()


def _fields(obj: object, known: frozenset[str], where: str) -> dict[str, Any]:
    """``obj`` with snake_case keys; unknown names are the service's 'Cannot find field'."""
    if not isinstance(obj, dict):
        at = f" at '{where}'" if where else ""
        raise SchemaError(f"Invalid JSON payload received. Expected an object{at}.")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = snake(key)
        if name not in known:
            at = f" at '{where}'" if where else ""
            raise SchemaError(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.',
                str(key),
            )
        out[name] = value
    return out


@dataclass(slots=True)
class ParsedRequest:
    prompt: str
    n_images: int
    aspect_ratio: str | None
    image_size: str | None
    ref_ratio: str | None
    want_text: bool
    want_image: bool
    # The optional fields as the fake read them, for tests: the system instruction's text,
    # the (category, threshold) pairs, and whether the Search tool was asked for.
    system_instruction: str | None = None
    safety_settings: tuple[tuple[str, str], ...] = ()
    google_search: bool = False
    # service_tier as sent, lower case ("flex"); None when the body has none (standard).
    service_tier: str | None = None
    contents: list[Any] = field(default_factory=list)  # as sent, checked: see stamps.seen

    def extras(self) -> dict[str, Any]:
        """What the fake records of a request beside its prompt (see FakeStats.requests)."""
        return {
            "prompt": self.prompt,
            "system_instruction": self.system_instruction,
            "safety_settings": list(self.safety_settings),
            "google_search": self.google_search,
            "image_size": self.image_size,
            "aspect_ratio": self.aspect_ratio,
            "service_tier": self.service_tier,
        }

    @property
    def ratio(self) -> str:
        return self.aspect_ratio or self.ref_ratio or "1:1"

    @property
    def size(self) -> str:
        return self.image_size or spec.DEFAULT_IMAGE_SIZE


def parse_request(body: bytes, model: str, resolve: FileResolver | None = None) -> ParsedRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from None
    return parse_request_obj(data, model, resolve)


def parse_request_obj(
    data: object, model: str, resolve: FileResolver | None = None
) -> ParsedRequest:
    """A decoded GenerateContentRequest, checked as the service does (batch lines use this).

    ``resolve`` looks up a ``fileData.fileUri``: the image's size, None if it is not an image
    the fake holds; it raises the service's 403 for an uploaded file that is gone.
    """
    top = _fields(data, _TOP_FIELDS, "")
    contents = top.get("contents")
    if not contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified")
    if not isinstance(contents, list):
        raise SchemaError("Invalid JSON payload received. 'contents' must be a list.", "contents")
    system = top.get("system_instruction")
    if system is not None and not isinstance(system, dict):
        # A list here is a common mistake: protobuf JSON wants one Content object.
        raise SchemaError(
            "Invalid JSON payload received. 'system_instruction' must be a Content object.",
            "system_instruction",
        )
    instruction = _system_text(system) if system is not None else None
    safety = _safety(top.get("safety_settings"))
    search = _google_search(top.get("tools"), model)

    texts: list[str] = []
    n_images = 0
    ref_ratio: str | None = None
    for ci, content_obj in enumerate(contents):
        content = _fields(content_obj, _CONTENT_FIELDS, f"contents[{ci}]")
        role = content.get("role", "user")
        if role not in ("user", "model"):
            raise invalid("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not parts or not isinstance(parts, list):
            raise invalid(
                f"* GenerateContentRequest.contents[{ci}].parts: contents.parts must not be empty."
            )
        for pi, part_obj in enumerate(parts):
            where = f"contents[{ci}].parts[{pi}]"
            part = _fields(part_obj, _PART_FIELDS, where)
            if not part.keys() & {
                "text",
                "inline_data",
                "file_data",
                "function_call",
                "function_response",
                "executable_code",
                "code_execution_result",
            }:
                raise invalid(
                    f"* GenerateContentRequest.{where}.data: required oneof field "
                    "'data' must have one initialized field"
                )
            text = part.get("text")
            if text is not None:
                if not isinstance(text, str):
                    raise invalid(f"Invalid value at '{where}.text' (TYPE_STRING)")
                if role == "user":
                    texts.append(text)
            image = "inline_data" in part
            dims: tuple[int, int] | None = None
            if image:
                dims = _check_blob(part["inline_data"], f"{where}.inline_data")
            elif "file_data" in part:
                # A Files API reference is an input image like an inline one (billed the same),
                # and the first reference's shape sets the output ratio just the same.
                ref = _fields(part["file_data"], _FILE_DATA_FIELDS, f"{where}.file_data")
                uri = ref.get("file_uri")
                if not isinstance(uri, str) or not uri:
                    raise invalid(
                        f"* GenerateContentRequest.{where}.file_data.file_uri: "
                        "file_uri is not specified"
                    )
                dims = resolve(uri) if resolve is not None else None
                image = dims is not None or str(ref.get("mime_type", "")).startswith("image/")
            if image:
                n_images += 1
                if n_images > spec.MAX_REFERENCE_IMAGES:
                    raise invalid(
                        f"Too many images in the request: at most "
                        f"{spec.MAX_REFERENCE_IMAGES} are supported for {model}."
                    )
                if ref_ratio is None and dims is not None:
                    ref_ratio = nearest_ratio(*dims)

    gen = _fields(top.get("generation_config") or {}, _GEN_FIELDS, "generation_config")
    count = gen.get("candidate_count")
    if isinstance(count, int) and count > 1:
        raise invalid(f"Multiple candidates is not enabled for models/{model}.")
    modalities = gen.get("response_modalities") or ["TEXT", "IMAGE"]
    if not isinstance(modalities, list):
        raise invalid("Invalid value at 'generation_config.response_modalities'.")
    for i, m in enumerate(modalities):
        if m not in _MODALITIES:
            raise invalid(
                f"Invalid value at 'generation_config.response_modalities[{i}]' "
                f"(type.googleapis.com/google.ai.generativelanguage.v1beta."
                f"GenerationConfig.Modality), {orjson.dumps(m).decode()}"
            )
    img_cfg = _fields(
        gen.get("image_config") or {}, _IMAGE_CONFIG_FIELDS, "generation_config.image_config"
    )
    info = builtin_table().get(model)
    ratios = info.aspect_ratios if info is not None else spec.ASPECT_RATIOS[:10]
    ratio = img_cfg.get("aspect_ratio")
    if ratio is not None and ratio not in ratios:
        raise invalid(
            f"Unsupported aspect ratio: {ratio}. Supported values are: {', '.join(ratios)}."
        )
    size = img_cfg.get("image_size")
    if size is not None:
        refused = "flash" in model if info is None else not info.sends_image_size
        if refused:
            raise invalid(f"Image size is not supported for models/{model}.")
        sizes = info.image_sizes if info is not None else ("1K", "2K", "4K")
        if size not in sizes:
            # Upper-case K only: the service rejects "1k".
            raise invalid(
                f"Unsupported image size: {size}. Supported values are: {', '.join(sizes)}."
            )
    return ParsedRequest(
        prompt="\n".join(texts),
        n_images=n_images,
        aspect_ratio=ratio,
        image_size=size,
        ref_ratio=ref_ratio,
        want_text="TEXT" in modalities,
        want_image="IMAGE" in modalities,
        system_instruction=instruction,
        safety_settings=safety,
        google_search=search,
        service_tier=_tier(top.get("service_tier")),
        contents=contents,
    )



def _tier(value: object) -> str | None:
    try:
        return tier_name(value)
    except ValueError as exc:
        raise invalid(f"Invalid value at 'service_tier' ({SERVICE_TIER_ENUM}), {exc}") from None


def _system_text(system: dict[str, Any]) -> str:
    """A system instruction is a Content of text parts ("Currently, text only")."""
    content = _fields(system, _CONTENT_FIELDS, "system_instruction")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise invalid("* GenerateContentRequest.system_instruction.parts: must not be empty.")
    texts: list[str] = []
    for i, part_obj in enumerate(parts):
        part = _fields(part_obj, _PART_FIELDS, f"system_instruction.parts[{i}]")
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid(f"Invalid value at 'system_instruction.parts[{i}].text' (TYPE_STRING)")
        texts.append(text)
    return "\n".join(texts)


def _safety(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SchemaError("Invalid JSON payload received. 'safety_settings' must be a list.")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        setting = _fields(item, _SAFETY_FIELDS, f"safety_settings[{i}]")
        if "method" in setting:
            raise invalid("method parameter is only supported in Vertex AI mode")
        category, threshold = setting.get("category"), setting.get("threshold")
        if category not in _CATEGORIES:
            raise invalid(
                f"Invalid value at 'safety_settings[{i}].category' ({_ENUM}HarmCategory), "
                f"{orjson.dumps(category).decode()}"
            )
        if threshold not in _THRESHOLDS:
            raise invalid(
                f"Invalid value at 'safety_settings[{i}].threshold' "
                f"({_ENUM}SafetySetting.HarmBlockThreshold), {orjson.dumps(threshold).decode()}"
            )
        out.append((str(category), str(threshold)))
    return tuple(out)


def _google_search(value: object, model: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, list):
        raise SchemaError("Invalid JSON payload received. 'tools' must be a list.")
    search = False
    for i, item in enumerate(value):
        tool = _fields(item, _TOOL_FIELDS, f"tools[{i}]")
        if "google_search" in tool:
            if not isinstance(tool["google_search"], dict):
                raise invalid(f"Invalid value at 'tools[{i}].google_search', expected an object")
            search = True
    info = builtin_table().get(model)
    if search and info is not None and not info.google_search:
        raise invalid(f"Search grounding is not supported for models/{model}.")
    return search


def _check_blob(obj: object, where: str) -> tuple[int, int] | None:
    blob = _fields(obj, _BLOB_FIELDS, where)
    mime = blob.get("mime_type")
    if not mime:
        raise invalid(f"* GenerateContentRequest.{where}.mime_type: mime_type is not specified")
    if mime not in spec.INPUT_MIME_TYPES:
        raise invalid(f"Unsupported MIME type: {mime}")
    data = blob.get("data")
    if not isinstance(data, str) or not data:
        raise invalid(f"* GenerateContentRequest.{where}.data: data is not specified")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        try:
            # Protobuf JSON also takes the URL-safe alphabet.
            raw = base64.urlsafe_b64decode(data)
        except (binascii.Error, ValueError):
            raise invalid(
                f"Unable to process input image: base64 decoding failed for "
                f"'{where}.data'. Please retry or report in {TROUBLESHOOT}"
            ) from None
    if mime not in _PROBED_MIME:
        return None
    dims = probe_image(raw)
    if dims is None:
        raise invalid(f"Unable to process input image. Please retry or report in {TROUBLESHOOT}")
    return dims
