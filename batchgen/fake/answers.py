"""The service's answers: success bodies, no-image outcomes, and every error it sends.

Bodies are built as dicts and dumped with orjson; the only large value in them is an image's
base64 text, which comes ready-made from the image cache.
"""

from __future__ import annotations

import base64
import math
import secrets
from typing import Any

import orjson

from batchgen.catalog import load_builtin

from .faults import FakeConfig
from .validate import TROUBLESHOOT, ApiError, ParsedRequest, invalid

THOUGHT_SIGNATURE = base64.b64encode(bytes(range(7, 250, 3)) * 3).decode("ascii")
TEXT_ONLY = "I can't draw that, but here's a description: a quiet scene, softly lit."


def is_flash(model: str) -> bool:
    """The 2.5 Flash image model: no thinking, no imageSize (the 3.1 Flash models have both)."""
    return model.startswith("gemini-2.5-flash")


def _priced(model: str) -> dict[str, Any] | None:
    found = load_builtin().get(model)
    return None if found is None or model in _LIST_PRICES else found


# The two models whose per-image prices Google rounds to a list price (shared/gemini-api.md).
_LIST_PRICES = ("gemini-3-pro-image", "gemini-3-pro-image-preview", "gemini-2.5-flash-image")


def image_tokens(model: str, size: str) -> int:
    entry = _priced(model)
    if entry is not None:
        tokens: dict[str, int] = entry["image_tokens"]
        return tokens.get(size) or max(tokens.values())
    if is_flash(model):
        return 1290
    return 2000 if size == "4K" else 1120


def image_price(model: str, size: str) -> float:
    entry = _priced(model)
    if entry is not None:
        return round(image_tokens(model, size) * float(entry["output_image_per_1m"]) / 1e6, 6)
    if is_flash(model):
        return 0.039
    return 0.24 if size == "4K" else 0.134


def grounding(prompt: str) -> dict[str, Any]:
    """The groundingMetadata of an answer grounded with Search (the fields Google documents)."""
    query = " ".join(prompt.split()[:8])
    return {
        "searchEntryPoint": {"renderedContent": f"<div class=\"fake-search\">{query}</div>"},
        "groundingChunks": [
            {"web": {"uri": "https://example.com/fake-source", "title": "example.com"}}
        ],
        "webSearchQueries": [query],
    }


def prompt_tokens(req: ParsedRequest) -> int:
    return max(1, len(req.prompt) // 4) + 560 * req.n_images


def usage(
    req: ParsedRequest, model: str, *, image: int = 0, text: str = "", thinking: bool = True
) -> dict[str, Any]:
    p = prompt_tokens(req)
    t = len(text) // 4 + 1 if text else 0
    thoughts = 264 if thinking and not is_flash(model) else 0
    out: dict[str, Any] = {
        "promptTokenCount": p,
        "candidatesTokenCount": image + t,
        "totalTokenCount": p + image + t + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": p - 560 * req.n_images}],
    }
    if req.n_images:
        out["promptTokensDetails"].append({"modality": "IMAGE", "tokenCount": 560 * req.n_images})
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    details = []
    if t:
        details.append({"modality": "TEXT", "tokenCount": t})
    if image:
        details.append({"modality": "IMAGE", "tokenCount": image})
    if details:
        out["candidatesTokensDetails"] = details
    if not image + t:
        del out["candidatesTokenCount"]
    return out


def caption(prompt: str) -> str:
    words = " ".join(prompt.split()[:8]) or "your request"
    return f"Here is your image of {words}."


def thought_text(prompt: str) -> str:
    words = " ".join(prompt.split()[:6]) or "the scene"
    return (
        f"**Composing the image**\n\nI'm working out the layout for {words}, settling the "
        "lighting and colour palette before rendering the final picture."
    )


def answer(
    model: str,
    parts: list[dict[str, Any]],
    finish: str,
    use: dict[str, Any],
    grounded: dict[str, Any] | None = None,
) -> bytes:
    cand: dict[str, Any] = {"finishReason": finish, "index": 0}
    if parts:
        cand = {"content": {"role": "model", "parts": parts}, **cand}
    if grounded is not None:
        cand["groundingMetadata"] = grounded
    return orjson.dumps(
        {
            "candidates": [cand],
            "usageMetadata": use,
            "modelVersion": model,
            "responseId": secrets.token_urlsafe(16),
        }
    )


def blocked(model: str, req: ParsedRequest) -> bytes:
    return orjson.dumps(
        {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": usage(req, model, thinking=False),
            "modelVersion": model,
            "responseId": secrets.token_urlsafe(16),
        }
    )


def empty_answer(model: str, req: ParsedRequest) -> bytes:
    """HTTP 200 with no candidates and no block reason: a glitch the service sometimes serves."""
    return orjson.dumps(
        {
            "usageMetadata": usage(req, model, thinking=False),
            "modelVersion": model,
            "responseId": secrets.token_urlsafe(16),
        }
    )


def capacity_exhausted() -> ApiError:
    """The service is overloaded: a 429 that names no quota and carries no RetryInfo."""
    return ApiError(429, "RESOURCE_EXHAUSTED", "Resource exhausted, please try again later.")


def retry_delay(seconds: float) -> str:
    """A protobuf Duration the way Google writes it: up to 9 decimals, trailing zeros dropped."""
    text = f"{max(0.0, seconds):.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def rate_limited(
    model: str,
    delay: float | None,
    quota_id: str,
    metric: str,
    *,
    limit: int = 0,
    per_day: bool = False,
) -> ApiError:
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, head to: "
        "https://ai.google.dev/gemini-api/docs/rate-limits.\n"
        f"* Quota exceeded for metric: generativelanguage.googleapis.com/{metric}, "
        f"limit: {limit}, model: {model}"
    )
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if delay is not None and not per_day:
        d = retry_delay(delay)
        message += f"\nPlease retry in {d}."
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": d})
    return ApiError(429, "RESOURCE_EXHAUSTED", message, details)


HTML_502 = (
    b"<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    b"  <title>Error 502 (Server Error)!!1</title>\n"
    b"  <p><b>502.</b> <ins>That\xe2\x80\x99s an error.</ins>\n"
    b"  <p>The server encountered a temporary error and could not complete your request."
    b"<p>Please try again in 30 seconds. <ins>That\xe2\x80\x99s all we know.</ins>\n"
)
HTML_200 = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    b"<body><h1>Checking your browser before accessing the site.</h1>"
    b"<p>This process is automatic. Your browser will redirect shortly.</p>"
    b"</body></html>"
)


def missing_key() -> ApiError:
    return ApiError(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    )


def bad_key() -> ApiError:
    message = "API key not valid. Please pass a valid API key."
    return invalid(
        message,
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ],
    )


def model_not_found(model: str, version: str) -> ApiError:
    return ApiError(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version {version}, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
    )


def too_large(limit: int) -> ApiError:
    return ApiError(
        413, "INVALID_ARGUMENT", f"Request payload size exceeds the limit: {limit} bytes."
    )


def fault_error(fault: str, model: str, cfg: FakeConfig) -> ApiError:
    """The error answer for an error fault name."""
    if fault == "429":
        return rate_limited(
            model,
            cfg.retry_delay_s,
            "GenerateRequestsPerMinutePerProjectPerModel",
            "generate_content_paid_tier_requests",
        )
    if fault in ("429_retry_after", "429_bare"):
        # Proxies send whole seconds in Retry-After, so a 0.05 s delay becomes "1".
        headers = (
            {"Retry-After": str(math.ceil(cfg.retry_delay_s))}
            if fault == "429_retry_after"
            else None
        )
        return ApiError(
            429,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
            headers=headers,
        )
    if fault == "429_capacity":
        return capacity_exhausted()
    if fault == "429_daily":
        return rate_limited(
            model,
            None,
            "GenerateRequestsPerDayPerProjectPerModel",
            "generate_content_paid_tier_requests_per_day",
            per_day=True,
        )
    simple = {
        "500": (
            500,
            "INTERNAL",
            f"An internal error has occurred. Please retry or report in {TROUBLESHOOT}",
        ),
        "503": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        "504": (504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
        "408": (408, "DEADLINE_EXCEEDED", "Request timed out."),
        "400": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    }
    if fault in simple:
        return ApiError(*simple[fault])
    # Only reachable if a fault name was written into the config bypassing its checks.
    return ApiError(500, "INTERNAL", f"fake server: unknown fault {fault!r}")
